"""The pipeline's stages, in order, in one table: what each reads and writes in the run folder.

The CLI's commands, the pipeline's dispatch (each stage runs as `kpod.pipeline.<name>`), the map from
a run-folder file to the stage that writes it, and the stale-record checks are all derived from
`STAGES`. Adding a stage is one entry here and one function in pipeline.py (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kpod.artifacts import RunPaths


@dataclass(frozen=True)
class Stage:
    name: str
    reads: Callable[[RunPaths, dict], list[Path]]  # run-folder inputs, given the config snapshot
    writes: Callable[[RunPaths], list[Path]]  # the files that say it has run
    folder: str | None = None  # the run-folder folder whose files it writes, when later stages read them
    kpod_only: bool = False  # Std-CoT runs skip it
    lends: tuple[str, ...] = ()  # the run-folder folders another run may borrow (full_pipeline --reuse-from)


def _train_inputs(p: RunPaths, c: dict) -> list[Path]:
    if c["method"] == "std-cot":
        return [p.rationales("train")]
    weights = [] if c["train"]["uniform_weights"] else [p.weights]
    schedule = [p.schedule] if c["schedule"]["progressive"] else []
    return [p.rationales("train"), *weights, *schedule]


STAGES: tuple[Stage, ...] = (
    Stage("generate", lambda p, c: [], lambda p: [p.rationales("train")], folder="rationales", lends=("rationales",)),
    Stage(
        "train_token_weighting",
        lambda p, c: [p.rationales("train")],
        lambda p: [p.weights],
        folder="weights",
        kpod_only=True,
        lends=("weights",),
    ),
    Stage(
        "calculate_difficulties",
        lambda p, c: [p.rationales("train")] + ([p.weights] if c["difficulty"]["use_weights"] else []),
        lambda p: [p.difficulties],
        folder="difficulty",
        kpod_only=True,
        lends=("difficulty",),
    ),
    Stage(
        "cluster",
        lambda p, c: [p.rationales("train")] + ([p.difficulties] if p.difficulties.is_file() else []),
        lambda p: [p.clusters],
        folder="schedule",
        kpod_only=True,
        lends=("clusters", "schedule"),
    ),
    Stage("train", _train_inputs, lambda p: [p.student / "kpod_student.json"]),
    Stage("evaluate", lambda p, c: [], lambda p: []),  # recorded per split as evaluate/<split>
)

BY_NAME = {s.name: s for s in STAGES}
PRODUCERS = {s.folder: s.name for s in STAGES if s.folder}
