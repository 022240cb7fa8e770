"""The files each stage writes into the run folder, and their readers (formats: docs/formats.md)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kpod.data.datasets import DataError, read_jsonl
from kpod.token_weights import TokenWeights


class RunPaths:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def rationales(self, split: str = "train") -> Path:
        return self.root / "rationales" / f"{split}.jsonl"

    @property
    def teacher_cache(self) -> Path:
        return self.root / "rationales" / "teacher_cache.sqlite"

    @property
    def weights(self) -> Path:
        return self.root / "weights" / "weights.jsonl"

    @property
    def weights_heldout(self) -> Path:
        return self.root / "weights" / "heldout.json"

    @property
    def faithfulness(self) -> Path:
        return self.root / "weights" / "faithfulness.json"

    @property
    def weighting_module(self) -> Path:
        return self.root / "weights" / "module.pt"

    @property
    def difficulties(self) -> Path:
        return self.root / "difficulty" / "difficulties.jsonl"

    @property
    def clusters(self) -> Path:
        return self.root / "clusters" / "clusters.json"

    @property
    def schedule(self) -> Path:
        return self.root / "schedule" / "schedule.json"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def eval_dir(self, split: str) -> Path:
        return self.root / "eval" / split

    def server_eval_cache(self, name: str) -> Path:
        return self.eval_dir(name) / "server_cache.sqlite"

    def log_file(self, stage: str) -> Path:
        return self.root / "logs" / f"{stage}.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "logs" / "tensorboard"

    def config_snapshot(self, stage: str) -> Path:
        """The resolved config of the stage's last run."""
        return self.root / "configs" / f"{stage}.yaml"

    def rationales_summary(self, split: str = "train") -> Path:
        return self.root / "rationales" / f"{split}.summary.json"

    @property
    def weights_summary(self) -> Path:
        return self.root / "weights" / "summary.json"

    @property
    def difficulties_summary(self) -> Path:
        return self.root / "difficulty" / "summary.json"

    @property
    def schedule_table(self) -> Path:
        return self.root / "schedule" / "table.txt"

    @property
    def train_summary(self) -> Path:
        return self.root / "train" / "summary.json"

    @property
    def manifest(self) -> Path:
        """What each stage read (stages.json)."""
        return self.root / "stages.json"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_files(self) -> Path:
        return self.root / "report_files"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: a folder shared with a group stays readable


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file. A folder that cannot
    be written (read-only, full disk) is a DataError naming the file; the temporary file is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise DataError(f"{path}: cannot write it ({exc.strerror or exc}); {_remedy(exc)}") from None


def _remedy(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full: free space, then rerun the same command"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable: fix its permissions or choose another --output-dir"
    return "check the folder, then rerun the same command"


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_json(path: Path, remedy: str, keys: tuple[str, ...] = ()) -> dict:
    """A run-folder JSON file, or a DataError naming the file and what to do (`remedy`) when it is
    missing, not UTF-8, not JSON, or lacks one of `keys`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {remedy}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: damaged ({exc.__class__.__name__}: {exc}); {remedy}") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path}: not a file kpod wrote here (no {', '.join(missing)}); {remedy}")
    return data


def rationale_key(row: dict) -> str:
    return f"{row['id']}#{row.get('sample', 0)}"


def read_rationales(path: Path, include_incorrect: bool = False) -> list[dict]:
    """Training rationales: rows of `rationales/<split>.jsonl`, by default only the correct ones."""
    if not Path(path).is_file():
        raise DataError(f"{path}: rationales file not found (run `kpod generate` first)")
    rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        missing = [k for k in ("id", "question", "gold", "rationale", "steps") if k not in row]
        if missing:
            raise DataError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        if "".join(row["steps"]) != row["rationale"]:
            raise DataError(f"{path}:{number}: steps do not join back to the rationale")
    if not rows:
        raise DataError(f"{path}: no rationales in the file")
    kept = [r for r in rows if include_incorrect or r.get("correct", True)]
    if not kept:
        raise DataError(
            f"{path}: all {len(rows)} rationales are marked incorrect (set train.include_incorrect=true to use them)"
        )
    return kept


def read_weights(path: Path) -> dict[str, TokenWeights]:
    if not Path(path).is_file():
        raise DataError(f"{path}: token weights not found (run `kpod train_token_weighting` first)")
    out = {}
    for number, row in enumerate(read_jsonl(path), 1):
        if len(row.get("offsets", [])) != len(row.get("weights", [])):
            raise DataError(f"{path}:{number}: offsets and weights differ in length")
        out[row["key"]] = TokenWeights([tuple(o) for o in row["offsets"]], row["weights"])
    return out


def read_difficulties(path: Path) -> dict[str, list[float]]:
    if not Path(path).is_file():
        raise DataError(f"{path}: step difficulties not found (run `kpod calculate_difficulties` first)")
    return {row["key"]: row["difficulties"] for row in read_jsonl(path)}


@dataclass
class ScheduleFile:
    """schedule/schedule.json: c_i(t) per rationale key and stage, and how it was made."""

    epochs: int
    stages: int
    input_steps: dict[str, list[int]]
    kind: str = "kpod"
    stage_unit: str = "epoch"  # a stage lasts an epoch, or an equal share of the run's optimizer steps
    peak_stage: float | None = None
    total_difficulty: float | None = None
    c0: float | None = None
    table: list[dict] = field(default_factory=list)


def write_schedule(path: Path, schedule: ScheduleFile) -> None:
    write_json(path, asdict(schedule))


def read_schedule(path: Path) -> ScheduleFile:
    """The schedule file; one written before `stages` and `kind` existed reads as kpod's, a stage per epoch."""
    if not Path(path).is_file():
        raise DataError(f"{path}: schedule not found (run `kpod calculate_difficulties` and `kpod cluster`)")
    data = read_json(path, "delete it and rerun `kpod cluster`", ("epochs", "input_steps"))
    data.setdefault("stages", data["epochs"])
    known = {f for f in ScheduleFile.__dataclass_fields__}
    steps = data["input_steps"]
    if not isinstance(steps, dict) or any(
        not isinstance(v, list) or len(v) != data["stages"] or not all(isinstance(c, int) and c >= 0 for c in v)
        for v in steps.values()
    ):
        raise DataError(
            f"{path}: input_steps must map each rationale key to {data['stages']} step counts (one per stage); "
            "delete it and rerun `kpod cluster`"
        )
    return ScheduleFile(**{k: v for k, v in data.items() if k in known})


def write_eval(folder: Path, metrics: dict, predictions: list[dict]) -> None:
    write_json(folder / "metrics.json", metrics)
    write_jsonl(folder / "predictions.jsonl", predictions)
