"""GSM8K, ASDiv, SVAMP and CommonsenseQA as one record type, with the paper's (MCC-KD) splits.

Local files are read as their original releases lay them out (see docs/formats.md); with no
data folder, the official splits come from the Hugging Face Hub.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from kpod.files import DataError, read_json, read_jsonl
from kpod.rationale import Task, normalize_gold

DATASETS = ("gsm8k", "asdiv", "svamp", "commonsenseqa")
DATASET_TASK: dict[str, Task] = {"gsm8k": "math", "asdiv": "math", "svamp": "math", "commonsenseqa": "choice"}
_MCC_KD_FOLDER = {"gsm8k": "GSM8K", "asdiv": "ASDiv", "svamp": "SVAMP", "commonsenseqa": "CSQA"}
_ALIASES = {"csqa": "commonsenseqa", "cqa": "commonsenseqa"}


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
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return key


def default_data_dir() -> Path | None:
    value = os.environ.get("KPOD_DATA_DIR")
    return Path(value) if value else None


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


# ---------------------------------------------------------------- splits


_OFFICIAL_FOLDER = {"gsm8k": "gsm8k", "svamp": "svamp", "asdiv": "asdiv", "commonsenseqa": "csqa"}


def dataset_folders(name: str, root: Path, split_source: str = "mcc_kd") -> list[Path]:
    """The folders of `root` that a dataset's questions are read from."""
    name = canonical_dataset(name)
    folders = [Path(root) / _OFFICIAL_FOLDER[name]]
    return folders + ([Path(root) / "splits_mcc_kd" / _MCC_KD_FOLDER[name]] if split_source == "mcc_kd" else [])


def _official(name: str, root: Path) -> DatasetSplits:
    if name == "gsm8k":
        return DatasetSplits(
            name,
            _gsm8k_file(root / "gsm8k/train.jsonl", "gsm8k-train"),
            dev=[],
            test=_gsm8k_file(root / "gsm8k/test.jsonl", "gsm8k-test"),
        )
    if name == "svamp":
        return DatasetSplits(name, [], dev=[], test=_svamp_file(root / "svamp/SVAMP.json"))
    if name == "asdiv":
        return DatasetSplits(name, [], dev=[], test=_asdiv_file(root / "asdiv/ASDiv.xml"))
    return DatasetSplits(
        name,
        _csqa_file(root / "csqa/train_rand_split.jsonl"),
        dev=[],
        test=_csqa_file(root / "csqa/dev_rand_split.jsonl"),
    )


def _match_split(path: Path, pool: dict[str, Question], name: str) -> list[Question]:
    """Resolve an MCC-KD split file (`instruction`, `label`) to records of the official release."""
    out = []
    for i, row in enumerate(read_json(path)):
        _require(row, ("instruction", "label"), f"{path}: item {i}")
        text = row["instruction"]
        if name == "commonsenseqa":
            stem, _, options = text.partition("Answer Choices:")
            choices = re.findall(r"^[A-E]\.\s*(.*)$", options.strip(), flags=re.MULTILINE)
            text = _csqa_key(stem, choices)
        found = pool.get(_key(text))
        if found is None:
            raise DataError(f"{path}: item {i}: question not found in the official {name} files")
        out.append(found)
    return out


def _csqa_key(stem: str, choices: list[str]) -> str:
    return " | ".join([stem.strip(), *[c.strip() for c in choices]])


def _mcc_kd(name: str, root: Path) -> DatasetSplits:
    official = _official(name, root)
    everything = official.train + official.test
    if name == "commonsenseqa":
        pool = {_key(_csqa_key(q.question.split("Answer Choices:")[0], q.choices)): q for q in everything}
    else:
        pool = {_key(q.question): q for q in everything}
    folder = root / "splits_mcc_kd" / _MCC_KD_FOLDER[name]
    dev = _match_split(folder / "dev.json", pool, name)
    test = _match_split(folder / "test.json", pool, name)
    held_out = {q.id for q in dev + test}
    if name == "svamp":
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


_HUB = {
    "gsm8k": ("openai/gsm8k", "main"),
    "svamp": ("ChilleD/SVAMP", None),
    "asdiv": ("EleutherAI/asdiv", None),
    "commonsenseqa": ("tau/commonsense_qa", None),
}


def _from_hub(name: str) -> DatasetSplits:
    import datasets

    repo, config = _HUB[name]
    ds = datasets.load_dataset(repo, config)

    def convert(split: str) -> list[Question]:
        out = []
        for i, row in enumerate(ds[split]) if split in ds else []:
            if name == "gsm8k":
                out.append(
                    Question(
                        f"gsm8k-{split}-{i}",
                        row["question"],
                        answer=normalize_gold(row["answer"].split("####")[-1], "math"),
                        task="math",
                        choices=None,
                        solution=clean_gsm8k_solution(row["answer"]),
                    )
                )
            elif name == "svamp":
                out.append(
                    Question(
                        f"svamp-{row['ID']}",
                        f"{row['Body'].strip()} {row['Question'].strip()}",
                        answer=normalize_gold(row["Answer"], "math"),
                        task="math",
                    )
                )
            elif name == "asdiv":
                out.append(
                    Question(
                        f"asdiv-{i}",
                        f"{row['body']} {row['question']}",
                        answer=normalize_gold(row["answer"].split("(")[0], "math"),
                        task="math",
                    )
                )
            else:
                choices = list(row["choices"]["text"])
                out.append(
                    Question(
                        f"csqa-{row['id']}",
                        csqa_question_text(row["question"], choices),
                        answer=row["answerKey"],
                        task="choice",
                        choices=choices,
                    )
                )
        return out

    if name == "commonsenseqa":
        return DatasetSplits(name, convert("train"), dev=[], test=convert("validation"))
    if name == "asdiv":
        return DatasetSplits(name, [], dev=[], test=convert("validation"))
    return DatasetSplits(name, convert("train"), dev=[], test=convert("test"))
