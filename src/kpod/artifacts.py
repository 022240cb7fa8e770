"""The files each stage writes into the run folder, and their readers (formats: docs/formats.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from kpod.files import (  # noqa: F401 - also imported from here
    DataError,
    atomic_write_text,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from kpod.token_weights import TokenWeights


class RunPaths:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def require_run(self) -> RunPaths:
        """Self, when the folder is a run folder (a stage has recorded itself there); else a DataError that
        names the runs inside it, if it is their parent."""
        if self.manifest.is_file():
            return self
        if not self.root.is_dir():
            raise DataError(f"{self.root}: run folder not found")
        runs = sorted(p.name for p in self.root.iterdir() if (p / "stages.json").is_file())
        inside = (
            f"; it holds the runs {', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''}: pass one" if runs else ""
        )
        raise DataError(
            f"{self.root}: not a kpod run folder (no stages.json){inside or '; pass the --output-dir a stage wrote'}"
        )

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
    def weights_quality(self) -> Path:
        return self.root / "weights" / "quality.json"

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

    def write_config_snapshot(self, stage: str, snapshot: dict) -> Path:
        """Write a resolved config (KPODConfig.snapshot()) as the stage's snapshot."""
        import yaml

        path = self.config_snapshot(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(snapshot, sort_keys=False))
        return path

    def stage_config(self, stage: str) -> dict:
        """The stage's config snapshot as a mapping; {} when it has not run here."""
        import yaml

        path = self.config_snapshot(stage)
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

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
    """schedule/schedule.json: c_i(t) per rationale key and curriculum phase, and how it was made."""

    epochs: int
    phases: int
    input_steps: dict[str, list[int]]
    kind: str = "kpod"
    phase_unit: str = "epoch"  # a phase lasts an epoch, or an equal share of the run's optimizer steps
    peak_phase: float | None = None
    total_difficulty: float | None = None
    c0: float | None = None
    table: list[dict] = field(default_factory=list)


def write_schedule(path: Path, schedule: ScheduleFile) -> None:
    write_json(path, asdict(schedule))


def read_schedule(path: Path) -> ScheduleFile:
    """The schedule file, checked: a step count per curriculum phase for every rationale."""
    if not Path(path).is_file():
        raise DataError(f"{path}: schedule not found (run `kpod calculate_difficulties` and `kpod cluster`)")
    data = read_json(path, "delete it and rerun `kpod cluster`", ("epochs", "phases", "input_steps"))
    known = {f for f in ScheduleFile.__dataclass_fields__}
    steps = data["input_steps"]
    if not isinstance(steps, dict) or any(
        not isinstance(v, list) or len(v) != data["phases"] or not all(isinstance(c, int) and c >= 0 for c in v)
        for v in steps.values()
    ):
        raise DataError(
            f"{path}: input_steps must map each rationale key to {data['phases']} step counts (one per phase); "
            "delete it and rerun `kpod cluster`"
        )
    return ScheduleFile(**{k: v for k, v in data.items() if k in known})


def write_eval(folder: Path, metrics: dict, predictions: list[dict]) -> None:
    write_json(folder / "metrics.json", metrics)
    write_jsonl(folder / "predictions.jsonl", predictions)
