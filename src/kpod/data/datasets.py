"""GSM8K, ASDiv, SVAMP and CommonsenseQA as one record type, with the paper's (MCC-KD) splits.

Local files are read as their original releases lay them out (see docs/formats.md); with no
data folder, the official splits come from the Hugging Face Hub.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from kpod.files import DataError, read_json, read_jsonl
from kpod.rationale import Task, normalize_gold


@dataclass
class Question:
    id: str
    question: str
    answer: str
    task: Task
    choices: list[str] | None = None
    solution: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetSplits:
    name: str
    train: list[Question]
    dev: list[Question] = field(default_factory=list)
    test: list[Question] = field(default_factory=list)

    def split(self, name: str) -> list[Question]:
        if name not in ("train", "dev", "test"):
            raise ValueError(f"unknown split {name!r}: expected train, dev or test")
        return getattr(self, name)


def canonical_dataset(name: str) -> str:
    key = next((n for n, spec in REGISTRY.items() if name.lower() in (n, *spec.aliases)), None)
    if key is None:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return key


def default_data_dir() -> Path | None:
    value = os.environ.get("KPOD_DATA_DIR")
    return Path(value) if value else None


def required_data_dir() -> Path:
    """KPOD_DATA_DIR, which must name a folder: where scripts that read local datasets (benches, studies) start."""
    root = default_data_dir()
    if root is None or not root.is_dir():
        raise DataError(f"KPOD_DATA_DIR={root}: not a data folder; set it to a folder laid out as docs/formats.md says")
    return root


def _require(row: dict, keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")


def _key(text: str) -> str:
    return " ".join(text.split()).lower()


def _question_text(text, where: str) -> str:
    """The question as trained and asked; an empty or non-text one is refused, naming where it is."""
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the question is empty (got {text!r}); fix or remove that row")
    return text.strip()


def clean_gsm8k_solution(answer_field: str) -> str:
    """The worked solution without `<<a*b=c>>` calculator notes and without the `#### n` line."""
    body = answer_field.split("####")[0]
    return re.sub(r"<<[^>]*>>", "", body).strip()


# ---------------------------------------------------------------- per dataset, official files


def _gsm8k_file(path: Path, prefix: str) -> list[Question]:
    out = []
    for i, row in enumerate(read_jsonl(path)):
        _require(row, ("question", "answer"), f"{path}:{i + 1}")
        if "####" not in row["answer"]:
            raise DataError(f"{path}:{i + 1}: answer has no '#### <number>' line")
        gold = normalize_gold(row["answer"].split("####")[-1], "math")
        out.append(
            Question(
                f"{prefix}-{i}",
                _question_text(row["question"], f"{path}:{i + 1}"),
                answer=gold,
                task="math",
                choices=None,
                solution=clean_gsm8k_solution(row["answer"]),
            )
        )
    return out


def _svamp_file(path: Path) -> list[Question]:
    rows = read_json(path)
    out = []
    for i, row in enumerate(rows):
        _require(row, ("ID", "Body", "Question", "Answer"), f"{path}: item {i}")
        text = f"{str(row['Body']).strip()} {str(row['Question']).strip()}"
        out.append(
            Question(
                f"svamp-{row['ID']}",
                _question_text(text, f"{path}: item {i}"),
                answer=normalize_gold(row["Answer"], "math"),
                task="math",
            )
        )
    return out


def _asdiv_file(path: Path) -> list[Question]:
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}:{exc.position[0]}: malformed XML ({exc})") from None
    out = []
    for problem in root.iter("Problem"):
        answer = (problem.findtext("Answer") or "").strip()
        numeric = re.match(r"^-?[\d,]*\.?\d+(?:/\d+)?", answer)
        if not numeric or ";" in answer or ":" in answer:
            continue  # ASDiv also holds ratio/multi-answer problems; KPOD's splits keep numeric ones
        text = f"{(problem.findtext('Body') or '').strip()} {(problem.findtext('Question') or '').strip()}"
        out.append(
            Question(
                f"asdiv-{problem.get('ID')}",
                _question_text(text, f"{path}: problem {problem.get('ID')}"),
                answer=normalize_gold(numeric.group(), "math"),
                task="math",
                choices=None,
                solution=None,  # its <Formula> (`248/16=15 r8`) is an equation, not a worked solution
            )
        )
    return out


def _csqa_file(path: Path, with_answers: bool = True) -> list[Question]:
    out = []
    for i, row in enumerate(read_jsonl(path)):
        _require(row, ("id", "question"), f"{path}:{i + 1}")
        q = row["question"]
        choices = [c["text"] for c in sorted(q["choices"], key=lambda c: c["label"])]
        text = csqa_question_text(_question_text(q["stem"], f"{path}:{i + 1}"), choices)
        answer = row.get("answerKey", "") if with_answers else ""
        out.append(Question(f"csqa-{row['id']}", text, answer=answer, task="choice", choices=choices))
    return out


def csqa_question_text(stem: str, choices: list[str]) -> str:
    options = " ".join(f"({letter}) {text}" for letter, text in zip("ABCDE", choices))
    return f"{stem.strip()} Answer Choices: {options}"


# ---------------------------------------------------------------- one entry per dataset


def _plain_key(question: Question) -> str:
    return _key(question.question)


def _instruction_key(instruction: str) -> str:
    return _key(instruction)


def _csqa_question_key(question: Question) -> str:
    return _key(_csqa_key(question.question.split("Answer Choices:")[0], question.choices))


def _csqa_instruction_key(instruction: str) -> str:
    stem, _, options = instruction.partition("Answer Choices:")
    return _key(_csqa_key(stem, re.findall(r"^[A-E]\.\s*(.*)$", options.strip(), flags=re.MULTILINE)))


def _hub_gsm8k(row: dict, split: str, i: int) -> Question:
    gold = normalize_gold(row["answer"].split("####")[-1], "math")
    return Question(f"gsm8k-{split}-{i}", row["question"], gold, "math", solution=clean_gsm8k_solution(row["answer"]))


def _hub_svamp(row: dict, split: str, i: int) -> Question:
    text = f"{row['Body'].strip()} {row['Question'].strip()}"
    return Question(f"svamp-{row['ID']}", text, normalize_gold(row["Answer"], "math"), "math")


def _hub_asdiv(row: dict, split: str, i: int) -> Question:
    text = f"{row['body']} {row['question']}"
    return Question(f"asdiv-{i}", text, normalize_gold(row["answer"].split("(")[0], "math"), "math")


def _hub_csqa(row: dict, split: str, i: int) -> Question:
    choices = list(row["choices"]["text"])
    text = csqa_question_text(row["question"], choices)
    return Question(f"csqa-{row['id']}", text, answer=row["answerKey"], task="choice", choices=choices)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything kpod knows of a dataset: adding one is one entry in REGISTRY (and its test)."""

    task: Task
    folder: str  # its official release under the data folder
    official: Callable[[Path], tuple[list[Question], list[Question]]]  # data folder -> (train, test)
    mcc_kd_folder: str  # the paper's splits, under <data>/splits_mcc_kd/
    hub: tuple[str, str | None]  # Hugging Face Hub repo and config, for a machine without a data folder
    hub_row: Callable[[dict, str, int], Question]  # (row, split, index) -> Question
    hub_splits: tuple[str | None, str]  # the Hub's (train, test) split names; None: no training split
    question_key: Callable[[Question], str] = _plain_key  # how an MCC-KD split file's instruction
    instruction_key: Callable[[str], str] = _instruction_key  # ... finds its question of the release
    mcc_kd_train: bool = False  # the splits ship a train file; else train is every other question
    aliases: tuple[str, ...] = ()


REGISTRY: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec(
        task="math",
        folder="gsm8k",
        official=lambda root: (
            _gsm8k_file(root / "gsm8k/train.jsonl", "gsm8k-train"),
            _gsm8k_file(root / "gsm8k/test.jsonl", "gsm8k-test"),
        ),
        mcc_kd_folder="GSM8K",
        hub=("openai/gsm8k", "main"),
        hub_row=_hub_gsm8k,
        hub_splits=("train", "test"),
    ),
    "asdiv": DatasetSpec(
        task="math",
        folder="asdiv",
        official=lambda root: ([], _asdiv_file(root / "asdiv/ASDiv.xml")),
        mcc_kd_folder="ASDiv",
        hub=("EleutherAI/asdiv", None),
        hub_row=_hub_asdiv,
        hub_splits=(None, "validation"),
    ),
    "svamp": DatasetSpec(
        task="math",
        folder="svamp",
        official=lambda root: ([], _svamp_file(root / "svamp/SVAMP.json")),
        mcc_kd_folder="SVAMP",
        hub=("ChilleD/SVAMP", None),
        hub_row=_hub_svamp,
        hub_splits=("train", "test"),
        mcc_kd_train=True,
    ),
    "commonsenseqa": DatasetSpec(
        task="choice",
        folder="csqa",
        official=lambda root: (
            _csqa_file(root / "csqa/train_rand_split.jsonl"),
            _csqa_file(root / "csqa/dev_rand_split.jsonl"),
        ),
        mcc_kd_folder="CSQA",
        hub=("tau/commonsense_qa", None),
        hub_row=_hub_csqa,
        hub_splits=("train", "validation"),
        question_key=_csqa_question_key,
        instruction_key=_csqa_instruction_key,
        aliases=("csqa", "cqa"),
    ),
}
DATASETS = tuple(REGISTRY)
DATASET_TASK: dict[str, Task] = {name: spec.task for name, spec in REGISTRY.items()}


# ---------------------------------------------------------------- splits


def dataset_folders(name: str, root: Path, split_source: str = "mcc_kd") -> list[Path]:
    """The folders of `root` that a dataset's questions are read from."""
    spec = REGISTRY[canonical_dataset(name)]
    folders = [Path(root) / spec.folder]
    return folders + ([Path(root) / "splits_mcc_kd" / spec.mcc_kd_folder] if split_source == "mcc_kd" else [])


def _official(name: str, root: Path) -> DatasetSplits:
    train, test = REGISTRY[name].official(root)
    return DatasetSplits(name, train, dev=[], test=test)


def _match_split(path: Path, pool: dict[str, Question], name: str) -> list[Question]:
    """Resolve an MCC-KD split file (`instruction`, `label`) to records of the official release."""
    out = []
    for i, row in enumerate(read_json(path)):
        _require(row, ("instruction", "label"), f"{path}: item {i}")
        found = pool.get(REGISTRY[name].instruction_key(row["instruction"]))
        if found is None:
            raise DataError(f"{path}: item {i}: question not found in the official {name} files")
        out.append(found)
    return out


def _csqa_key(stem: str, choices: list[str]) -> str:
    return " | ".join([stem.strip(), *[c.strip() for c in choices]])


def _mcc_kd(name: str, root: Path) -> DatasetSplits:
    spec = REGISTRY[name]
    official = _official(name, root)
    everything = official.train + official.test
    pool = {spec.question_key(q): q for q in everything}
    folder = root / "splits_mcc_kd" / spec.mcc_kd_folder
    dev = _match_split(folder / "dev.json", pool, name)
    test = _match_split(folder / "test.json", pool, name)
    held_out = {q.id for q in dev + test}
    if spec.mcc_kd_train:
        train = _match_split(folder / "train.json", pool, name)
    else:
        train = [q for q in everything if q.id not in held_out]
    return DatasetSplits(name, train, dev=dev, test=test)


def load_dataset_splits(
    name: str, data_dir: str | Path | None = None, split_source: Literal["mcc_kd", "official"] = "mcc_kd"
) -> DatasetSplits:
    """Load a dataset's train/dev/test questions.

    data_dir: a folder laid out like `KPOD_DATA_DIR` (gsm8k/, svamp/, asdiv/, csqa/,
    splits_mcc_kd/). None: `KPOD_DATA_DIR`, else the Hugging Face Hub (official splits only).
    """
    name = canonical_dataset(name)
    root = Path(data_dir) if data_dir else default_data_dir()
    if root is None:
        return _from_hub(name)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (set --data-dir or KPOD_DATA_DIR)")
    if split_source == "official":
        return _official(name, root)
    if split_source != "mcc_kd":
        raise ValueError(f"unknown split_source {split_source!r}: expected mcc_kd or official")
    return _mcc_kd(name, root)


def _from_hub(name: str) -> DatasetSplits:
    import datasets

    spec = REGISTRY[name]
    ds = datasets.load_dataset(*spec.hub)

    def convert(split: str | None) -> list[Question]:
        return [spec.hub_row(row, split, i) for i, row in enumerate(ds[split])] if split in ds else []

    train, test = spec.hub_splits
    return DatasetSplits(name, convert(train), dev=[], test=convert(test))
