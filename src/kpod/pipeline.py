"""The pipeline stages as plain functions over a config; each writes its files into the run folder.

generate -> train_token_weighting -> calculate_difficulties -> cluster -> train -> evaluate.
Each stage records in `stages.json` the config fields it read (with their values), the digests of
the run-folder files it read and its arguments. `full_pipeline` runs the stages in order and skips
one whose record still holds; a stage run by hand refuses input files whose own record no longer
holds (computed from other settings or older files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import yaml

from kpod.artifacts import RunPaths, write_json, write_jsonl
from kpod.config import ConfigError, KPODConfig, record_reads
from kpod.data.datasets import DatasetSplits, load_dataset_splits
from kpod.files import DataError
from kpod.runlock import run_folder_lock
from kpod.stage_records import (  # noqa: F401 - NOT_INPUTS, StaleInputError: part of the pipeline's interface
    NOT_INPUTS,
    StaleInputError,
    check_upstream,
    current_inputs,
    declared_uses,
    effective_value,
    new_record,
    read_manifest,
    undeclared_reads,
    why_stale,
)
from kpod.stages import STAGES

log = logging.getLogger("kpod")

STAGE_NAMES = tuple(s.name for s in STAGES)


def load_splits(cfg: KPODConfig, *needed: str) -> DatasetSplits:
    """The dataset's splits; only those `needed` are kept (cut to their configured size), the others are
    empty, so that a stage depends on the size settings of the splits it uses and on no other."""
    splits = load_dataset_splits(cfg.dataset, cfg.data.data_dir, cfg.data.split_source)
    if "train" not in needed:
        splits.train = []
    elif cfg.data.max_train_questions:
        rng = random.Random(cfg.seed)
        train = list(splits.train)
        rng.shuffle(train)
        splits.train = train[: cfg.data.max_train_questions]
    for name in ("dev", "test"):
        if name not in needed:
            setattr(splits, name, [])
        elif cfg.data.max_eval_questions:
            setattr(splits, name, getattr(splits, name)[: cfg.data.max_eval_questions])
    return splits


def prepare_run_folder(root: Path) -> None:
    """The run folder exists and is writable, or a DataError says what to change."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: the output folder is a file; choose another --output-dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".kpod-write-test-{os.getpid()}"  # one per process: data-parallel ranks probe at once
        probe.write_text("")
        probe.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(
            f"{root}: cannot write the run folder there ({exc.strerror}); choose another --output-dir"
        ) from None


@contextlib.contextmanager
def stage_logging(cfg: KPODConfig, stage: str):
    """Log the stage to `logs/<stage>.log` in the run folder and snapshot the resolved config."""
    paths = RunPaths(cfg.run_dir)
    prepare_run_folder(paths.root)
    paths.log_file(stage).parent.mkdir(parents=True, exist_ok=True)
    paths.write_config_snapshot(stage, cfg.snapshot())
    handler = logging.FileHandler(paths.log_file(stage))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    start = time.time()
    # every source of randomness (python, numpy, torch) before the stage builds any module, in
    # every process, so that the same config gives the same files
    from transformers import set_seed

    set_seed(cfg.seed)
    log.info("stage %s: run folder %s", stage, paths.root)
    try:
        yield paths
        log.info("stage %s done in %.1f s", stage, time.time() - start)
    finally:
        root.removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------- stages


def generate(cfg: KPODConfig, split: str = "train") -> dict:
    """Teacher rationales for a split: rationales/<split>.jsonl and its summary."""
    from kpod.teacher.importers import import_rationales, reference_rationales

    with recorded_stage(cfg, "generate"):
        splits = load_splits(cfg, split)
        questions = splits.split(split)
        with stage_logging(cfg, "generate") as paths:
            out = paths.rationales(split)
            t = cfg.teacher
            if t.kind == "reference":
                records = reference_rationales(questions)
                summary = {"teacher": "reference"}
            elif t.kind == "file":
                records, counts = import_rationales(t.import_path, questions, fmt=t.import_format, split=split)
                summary = {
                    "teacher": f"file:{t.import_path}",
                    "import": counts,
                    "unmatched_entries": counts["dropped"]["no question of this split"],
                }
            else:
                from kpod.teacher.openai_teacher import run_openai_teacher

                records, summary = run_openai_teacher(cfg, questions, paths)
            write_jsonl(out, records)
            correct = sum(r["correct"] for r in records)
            summary.update(
                {
                    "split": split,
                    "questions": len(questions),
                    "rationales": len(records),
                    "correct": correct,
                    "teacher_accuracy": 100.0 * correct / max(1, len(records)),
                }
            )
            write_json(paths.rationales_summary(split), summary)
            log.info("wrote %d rationales (%d correct) to %s", len(records), correct, out)
            return summary


def train_token_weighting(cfg: KPODConfig) -> dict:
    """The mask-learning module and the token weights of every training rationale: weights/."""
    from kpod.weighting.train import train_weighting

    with recorded_stage(cfg, "train_token_weighting"), stage_logging(cfg, "train_token_weighting"):
        return train_weighting(cfg)


def calculate_difficulties(cfg: KPODConfig) -> dict:
    """Step difficulties from the pretrained student: difficulty/difficulties.jsonl."""
    from kpod.curriculum.difficulty import compute_difficulties

    with recorded_stage(cfg, "calculate_difficulties"), stage_logging(cfg, "calculate_difficulties"):
        return compute_difficulties(cfg)


def cluster(cfg: KPODConfig) -> dict:
    """Question clusters and, given difficulties, the progressive schedule: clusters/, schedule/."""
    from kpod.curriculum.cluster import cluster_questions
    from kpod.curriculum.schedule import build_schedule_file

    with recorded_stage(cfg, "cluster"), stage_logging(cfg, "cluster"):
        summary = cluster_questions(cfg)
        if RunPaths(cfg.run_dir).difficulties.is_file():
            summary["schedule"] = build_schedule_file(cfg)
        return summary


def train(cfg: KPODConfig, model_path: str | None = None) -> dict:
    """The student (KPOD or Std-CoT): student/. model_path: start from this model instead of student.model."""
    from kpod.student.recipe import train_student

    with recorded_stage(cfg, "train", {"model_path": model_path}), stage_logging(cfg, "train"):
        splits = load_splits(cfg, "train", "dev") if cfg.train.eval_every else load_splits(cfg, "train")
        return train_student(cfg, splits, model_path)


def evaluate(cfg: KPODConfig, model_path: str | None = None, split: str | None = None, tag: str | None = None) -> dict:
    """Accuracy of a student on a split: eval/<split>[-<tag>]/. model_path: a `kpod train` output folder,
    a hub id or a local model; default: the run folder's trained student, else the base model. A
    student trained on another dataset is evaluated into eval/<split>-<dataset> unless a tag is given."""
    from kpod.artifacts import write_eval

    paths = RunPaths(cfg.run_dir)
    split = split or cfg.eval.split
    _refuse_a_foreign_model(paths, model_path)
    trained_on = _trained_dataset(paths)
    if tag is None and model_path is None and trained_on not in (None, cfg.dataset):
        tag = cfg.dataset
    folder = paths.eval_dir(split if tag is None else f"{split}-{tag}")
    with recorded_stage(cfg, f"evaluate/{folder.name}", {"model_path": model_path}), stage_logging(cfg, "evaluate"):
        questions = load_splits(cfg, split).split(split)
        if not questions:
            raise DataError(f"{cfg.dataset} has no {split} split with this split_source")
        source = model_path or (
            str(paths.student) if (paths.student / "kpod_student.json").is_file() else cfg.student.model
        )
        if cfg.eval.backend == "server":
            from kpod.evaluation.server import evaluate_on_server

            cache = paths.server_eval_cache(folder.name)
            metrics, predictions = evaluate_on_server(cfg, questions, source=source, cache_path=cache)
        else:
            from kpod.decoding import evaluate_questions
            from kpod.models import load_student, merge_adapter

            model, tokenizer = load_student(source, cfg.student.dtype)
            model = merge_adapter(model)
            metrics, predictions = evaluate_questions(
                model,
                tokenizer,
                questions=questions,
                max_new_tokens=cfg.eval.max_new_tokens,
                batch_size=cfg.eval.batch_size,
            )
            references = _reference_rationales(cfg, questions, split) if cfg.eval.rationale_loss else None
            if references:
                from kpod.decoding import rationale_loss

                loss = rationale_loss(model, tokenizer, references[1], batch_size=max(1, cfg.eval.batch_size // 4))
                metrics["rationale_loss"] = {**loss, "source": references[0]}
        metrics.update({"model": source, "split": split, "dataset": cfg.dataset})
        write_eval(folder, metrics, predictions)
        log.info(
            "%s on %s/%s: accuracy %.2f%% (%d/%d)",
            source,
            cfg.dataset,
            split,
            metrics["accuracy"],
            metrics["correct"],
            metrics["total"],
        )
        return metrics


def _reference_rationales(cfg: KPODConfig, questions, split: str) -> tuple[str, list] | None:
    """(where they come from, [(question, rationale)]) for the held-out rationale loss, or None."""
    if cfg.eval.reference_rationales:
        from kpod.teacher.importers import import_rationales

        records, _ = import_rationales(cfg.eval.reference_rationales, questions, split=split)
        by_id = {q.id: q for q in questions}
        first = {}
        for r in records:
            first.setdefault(r["id"], r["rationale"])
        return str(cfg.eval.reference_rationales), [(by_id[i], text) for i, text in first.items()]
    worked = [(q, q.solution) for q in questions if q.solution]
    return ("the dataset's worked solutions", worked) if worked else None


def _refuse_a_foreign_model(paths: RunPaths, model_path: str | None) -> None:
    """A run folder's evaluations are its own student's: another model evaluated there would pass, in
    report and compare, for the run's student."""
    if model_path is None or not (paths.student / "kpod_student.json").is_file():
        return
    if Path(model_path).resolve() == paths.student.resolve():
        return
    name = Path(model_path.rstrip("/")).name or "model"
    raise DataError(
        f"{paths.root} holds its own trained student ({paths.student}): evaluating {model_path} there would "
        f"replace that student's evaluation in report and compare. Evaluate it in a run folder of its own, "
        f"with the same settings: kpod evaluate --model_path {model_path} --output-dir {paths.root.parent / (paths.root.name + '-' + name)}"
        + (f" --config {paths.config_snapshot('train')}" if paths.config_snapshot("train").is_file() else "")
    )


def _trained_dataset(paths: RunPaths) -> str | None:
    snapshot = paths.config_snapshot("train")
    if not (paths.student / "kpod_student.json").is_file() or not snapshot.is_file():
        return None
    return (yaml.safe_load(snapshot.read_text()) or {}).get("dataset")


@contextlib.contextmanager
def recorded_stage(cfg: KPODConfig, stage: str, arguments: dict | None = None):
    """Run a stage while recording the config fields it reads; on success write its record (fields and
    values read, input file digests, arguments) to stages.json. On failure its old record is removed.
    The run folder is locked for the stage: a second process refuses instead of writing beside it."""
    arguments = arguments or {}
    paths = RunPaths(cfg.run_dir)
    prepare_run_folder(paths.root)
    with run_folder_lock(paths.root):
        yield from _recorded(cfg, stage, arguments, paths)


def check_choices(cfg: KPODConfig) -> None:
    """Settings named after an entry of a stage's table (weighting.estimator, schedule.kind) are checked
    against it before anything runs (the shared config layer cannot see the stages' tables)."""
    from kpod.curriculum.schedule import SCHEDULES
    from kpod.weighting.module import estimator_problem

    problems = []
    kind = cfg.schedule.kind
    if kind not in SCHEDULES:
        problems.append(f"schedule.kind: unknown {kind!r}; known: {', '.join(sorted(SCHEDULES))}")
    w = cfg.weighting
    problem = estimator_problem(w.estimator, masking=w.masking, samples=w.samples)
    if problem:
        problems.append(problem)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _recorded(cfg: KPODConfig, stage: str, arguments: dict, paths: RunPaths):
    check_choices(cfg)
    manifest = read_manifest(paths.root)
    check_upstream(cfg, stage, manifest)
    inputs = current_inputs(cfg, stage, arguments)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if stage == "train":
        _discard_foreign_checkpoints(
            cfg, paths, manifest=manifest, inputs=inputs, arguments=arguments, main_process=main_process
        )
    if main_process and manifest.pop(stage, None) is not None:
        write_json(paths.manifest, manifest)
    with record_reads() as reads:
        yield
    undeclared = undeclared_reads(cfg, stage, reads)
    if undeclared:  # the stage table is wrong: its record would hold when these change
        message = f"stage {stage} read settings the stage table does not declare: {', '.join(undeclared)} (kpod.stages)"
        if os.environ.get("KPOD_CHECK_DECLARED") == "1":
            raise AssertionError(message)
        log.warning("%s; it reruns only when a declared setting changes", message)
    if main_process:
        manifest = read_manifest(paths.root)
        manifest[stage] = new_record(cfg, stage, inputs, arguments)
        write_json(paths.manifest, manifest)


def _discard_foreign_checkpoints(cfg, paths, manifest, inputs, arguments, main_process) -> None:
    """Checkpoints of a training run on other data or of another model must not be resumed (other
    Trainer settings, such as max_steps, may change between a run and its resumption)."""
    snapshot = cfg.snapshot()
    identity = [snapshot[k] for k in ("dataset", "data", "seed", "method", "student")] + [inputs, arguments]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if manifest.get("train_started", {}).get("key") != key and main_process:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
        manifest["train_started"] = {"key": key}
        write_json(paths.manifest, manifest)


def full_pipeline(
    cfg: KPODConfig, model_path: str | None = None, force: bool = False, reuse_from: str | Path | None = None
) -> dict:
    """Every stage in order, each skipped when its recorded run still holds (stages.json). reuse_from:
    another run folder whose stages before `train` are borrowed where their records hold for this config."""
    check_choices(cfg)
    prepare_run_folder(RunPaths(cfg.run_dir).root)
    with run_folder_lock(cfg.run_dir):
        if reuse_from is not None and not force:
            lend_stages(cfg, Path(reuse_from))
        return _run_stages(cfg, model_path, force)


def lend_stages(cfg: KPODConfig, source: Path) -> list[str]:
    """Copy into this run the stages of `source` whose records hold for this config, in pipeline order
    and stopping at the first that does not: their folders, records and config snapshots. A stage this
    run already has current is kept. The rule is a rerun's: the settings each stage read, its input
    files (upstream ones are the lent copies) and the files it read outside the run folder."""
    source_paths, paths = RunPaths(source).require_run(), RunPaths(cfg.run_dir)
    if source_paths.root.resolve() == paths.root.resolve():
        raise DataError(f"--reuse-from {source}: that is this run folder")
    as_source = cfg.model_copy(update={"output_dir": source_paths.root})
    theirs = read_manifest(source_paths.root)
    lent = []
    for stage in (s for s in STAGES if s.lends and (cfg.method == "kpod" or not s.kpod_only)):
        if why_stale(cfg, stage.name, read_manifest(paths.root)) is None:
            continue  # ours already holds
        reason = why_stale(as_source, stage.name, theirs)
        if reason is not None:
            log.info("stage %s is not borrowed from %s: %s", stage.name, source, reason)
            break
        for folder in stage.lends:
            if (source_paths.root / folder).is_dir():
                shutil.rmtree(paths.root / folder, ignore_errors=True)
                shutil.copytree(source_paths.root / folder, paths.root / folder)
        manifest = read_manifest(paths.root)
        manifest[stage.name] = theirs[stage.name]
        write_json(paths.manifest, manifest)
        reason = why_stale(cfg, stage.name, manifest)  # its inputs here (ours, or lent) are the ones it read
        if reason is not None:
            del manifest[stage.name]
            write_json(paths.manifest, manifest)
            log.info("stage %s is not borrowed from %s: here %s", stage.name, source, reason)
            break
        paths.write_config_snapshot(stage.name, cfg.snapshot())
        lent.append(stage.name)
    log.info("borrowed from %s: %s", source, ", ".join(lent) or "nothing")
    return lent


def _run_stages(cfg: KPODConfig, model_path: str | None, force: bool) -> dict:
    stages = [s.name for s in STAGES if cfg.method == "kpod" or not s.kpod_only]
    paths = RunPaths(cfg.run_dir)
    results = {}
    for stage in stages:
        record_name = f"evaluate/{cfg.eval.split}" if stage == "evaluate" else stage
        arguments = (
            {"model_path": model_path} if stage == "train" else ({"model_path": None} if stage == "evaluate" else {})
        )
        reason = (
            "--force"
            if force
            else why_stale(cfg, record_name, manifest=read_manifest(cfg.run_dir), arguments=arguments)
        )
        if reason is None:
            log.info("stage %s is up to date, skipped", stage)
            results[stage] = "skipped"
            # its record holds for this config: the run's readers check the run as it now is
            paths.write_config_snapshot(stage, cfg.snapshot())
            continue
        log.info("stage %s runs: %s", stage, reason)
        if stage == "train":
            results[stage] = train(cfg, model_path)
        elif stage == "evaluate":
            results[stage] = evaluate(cfg, split=cfg.eval.split, tag=None)
        else:
            results[stage] = STAGE_FUNCTIONS[stage](cfg)
    return results


STAGE_FUNCTIONS = {name: globals()[name] for name in STAGE_NAMES}  # each stage runs as the function of its name
