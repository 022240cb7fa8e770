"""The pipeline's stages, in order, in one table: what each reads and writes in the run folder.

The CLI's commands, the pipeline's dispatch (each stage runs as `kpod.pipeline.<name>`), the map from
a run-folder file to the stage that writes it, and the stale-record checks are all derived from
`STAGES`. Each stage declares the settings it computes from (`uses`, given the run folder and config);
a stage reruns when one of them or one of its input files changed, and the tests check each
declaration against what the stage reads while it runs (kpod.config.record_reads). Adding a stage is
one entry here and one function in pipeline.py (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kpod.artifacts import RunPaths


@dataclass(frozen=True)
class Stage:
    name: str
    uses: Callable[[RunPaths, dict], list[str]]  # the settings it computes from, given the run folder and config
    reads: Callable[[RunPaths, dict], list[Path]]  # run-folder inputs, given the config snapshot
    writes: Callable[[RunPaths], list[Path]]  # the files that say it has run
    folder: str | None = None  # the run-folder folder whose files it writes, when later stages read them
    kpod_only: bool = False  # Std-CoT runs skip it
    lends: tuple[str, ...] = ()  # the run-folder folders another run may borrow (full_pipeline --reuse-from)


# Settings that say how to run, never what is computed: no stage reruns when they change.
HOW_TO_RUN = frozenset(
    {
        "output_dir",
        "report_to",
        "train.resume",
        "train.save_checkpoints",
        "weighting.gradient_checkpointing",
        *(
            f"teacher.{name}"
            for name in (
                "api_key_env",
                "concurrency",
                "requests_per_minute",
                "tokens_per_minute",
                "batch_delay",
                "max_retries",
                "timeout",
                "stall_timeout",
                "backoff_base",
                "backoff_max",
                "price_per_1k_prompt",
                "price_per_1k_completion",
                "budget_usd",
            )
        ),
        *(f"eval.server_{name}" for name in ("api_key_env", "concurrency", "timeout", "max_retries", "stall_timeout")),
    }
)

_DATA = ["dataset", "data.data_dir", "data.split_source"]
_LORA = ["student.lora_r", "student.lora_alpha", "student.lora_dropout", "student.target_modules"]
_STUDENT_LENGTHS = ["student.max_input_tokens", "student.max_target_tokens"]


def _generate_uses(p: RunPaths, c: dict) -> list[str]:
    by_kind = {
        "openai": [
            f"teacher.{n}"
            for n in (
                "model",
                "base_url",
                "temperature",
                "max_tokens",
                "samples_per_question",
                "prompt_template",
                "system_prompt",
            )
        ],
        "file": ["teacher.import_path", "teacher.import_format"],
    }
    return ["seed", *_DATA, "data.max_train_questions", "teacher.kind", *by_kind.get(c["teacher"]["kind"], [])]


def _weighting_uses(p: RunPaths, c: dict) -> list[str]:
    w = c["weighting"]
    model = [f"weighting.{n}" for n in w if n not in ("overlap", "quality_rationales", "reasoner_learning_rate")]
    reasoner_trains = w["reasoner_warmup_epochs"] > 0 or not w["freeze_reasoner"]
    return (
        ["seed", "student.model", "student.dtype", "train.include_incorrect", *model]
        + (["weighting.quality_rationales"] if w["quality_check"] else [])
        + (["weighting.reasoner_learning_rate"] if reasoner_trains else [])
        + (_LORA if w["reasoner_lora"] else [])
    )


def _difficulty_uses(p: RunPaths, c: dict) -> list[str]:
    weights = ["weighting.overlap"] if c["difficulty"]["use_weights"] else []
    return [
        "seed",
        "student.model",
        "student.dtype",
        *_STUDENT_LENGTHS,
        "difficulty.use_weights",
        "difficulty.batch_size",
        *weights,
    ]


def _cluster_uses(p: RunPaths, c: dict) -> list[str]:
    embedding = c["cluster"]["embedding"]
    source = {"student": ["student.model"], "glove": ["cluster.embedding_path"], "sentence": ["cluster.embedding_path"]}
    # every schedule parameter, whichever ones the chosen kind reads (the kinds' table is a stage's own)
    schedule = [f"schedule.{n}" for n in ("kind", "p", "c0_ratio", "beta", "peak_fraction", "phases")]
    return [
        "seed",
        "cluster.k",
        "cluster.embedding",
        *source.get(embedding, []),
        *schedule,
        "train.epochs",
        "train.include_incorrect",
    ]


def _train_uses(p: RunPaths, c: dict) -> list[str]:
    t = c["train"]
    uses = ["seed", "method", *_DATA, "data.max_train_questions", "student.model", "student.lora", "student.dtype"]
    uses += _STUDENT_LENGTHS + (_LORA if c["student"]["lora"] else [])
    uses += [
        f"train.{n}" for n in ("epochs", "learning_rate", "batch_size", "gradient_accumulation_steps", "trainer_args")
    ]
    uses += ["train.include_incorrect", "train.eval_every"]
    if t["eval_every"] > 0:
        uses += ["train.eval_questions", "data.max_eval_questions", "eval.max_new_tokens", "eval.batch_size"]
    if c["method"] == "kpod":
        uses += ["train.uniform_weights", "schedule.progressive"]
        if not t["uniform_weights"]:
            uses += ["train.weight_norm", "train.weight_floor", "weighting.overlap"]
        if c["schedule"]["progressive"]:
            uses += ["schedule.phases"]
    return uses


def _evaluate_uses(p: RunPaths, c: dict) -> list[str]:
    e = c["eval"]
    uses = ["seed", *_DATA, "data.max_eval_questions", "student.dtype", "eval.backend", "eval.max_new_tokens"]
    if not (p.student / "kpod_student.json").is_file():  # no trained student here: the base model is evaluated
        uses += ["student.model"]
    uses += ["eval.rationale_loss"] + (["eval.reference_rationales"] if e["rationale_loss"] else [])
    uses += ["eval.server_url", "eval.server_model"] if e["backend"] == "server" else ["eval.batch_size"]
    return uses


def _train_inputs(p: RunPaths, c: dict) -> list[Path]:
    if c["method"] == "std-cot":
        return [p.rationales("train")]
    weights = [] if c["train"]["uniform_weights"] else [p.weights]
    schedule = [p.schedule] if c["schedule"]["progressive"] else []
    return [p.rationales("train"), *weights, *schedule]


STAGES: tuple[Stage, ...] = (
    Stage(
        "generate",
        _generate_uses,
        lambda p, c: [],
        lambda p: [p.rationales("train")],
        folder="rationales",
        lends=("rationales",),
    ),
    Stage(
        "train_token_weighting",
        _weighting_uses,
        lambda p, c: [p.rationales("train")],
        lambda p: [p.weights],
        folder="weights",
        kpod_only=True,
        lends=("weights",),
    ),
    Stage(
        "calculate_difficulties",
        _difficulty_uses,
        lambda p, c: [p.rationales("train")] + ([p.weights] if c["difficulty"]["use_weights"] else []),
        lambda p: [p.difficulties],
        folder="difficulty",
        kpod_only=True,
        lends=("difficulty",),
    ),
    Stage(
        "cluster",
        _cluster_uses,
        lambda p, c: [p.rationales("train")] + ([p.difficulties] if p.difficulties.is_file() else []),
        lambda p: [p.clusters],
        folder="schedule",
        kpod_only=True,
        lends=("clusters", "schedule"),
    ),
    Stage("train", _train_uses, _train_inputs, lambda p: [p.student / "kpod_student.json"]),
    Stage("evaluate", _evaluate_uses, lambda p, c: [], lambda p: []),  # recorded per split as evaluate/<split>
)

BY_NAME = {s.name: s for s in STAGES}
PRODUCERS = {s.folder: s.name for s in STAGES if s.folder}
