"""The pipeline stages as plain functions over a config; each writes its files into the run folder.

generate -> train_token_weighting -> calculate_difficulties -> cluster -> train -> evaluate.
`full_pipeline` runs them in order and skips a stage whose outputs exist and whose inputs and
config are unchanged (a content hash stored in `stages.json`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from pathlib import Path

import yaml

from kpod.artifacts import RunPaths, read_json, write_json, write_jsonl
from kpod.config import KPODConfig
from kpod.data.datasets import DataError, DatasetSplits, load_dataset_splits

log = logging.getLogger("kpod")

STAGES = ("generate", "train_token_weighting", "calculate_difficulties", "cluster", "train", "evaluate")


def load_splits(cfg: KPODConfig) -> DatasetSplits:
    splits = load_dataset_splits(cfg.dataset, cfg.data.data_dir, cfg.data.split_source)
    if cfg.data.max_train_questions:
        rng = random.Random(cfg.seed)
        train = list(splits.train)
        rng.shuffle(train)
        splits.train = train[: cfg.data.max_train_questions]
    if cfg.data.max_eval_questions:
        splits.dev = splits.dev[: cfg.data.max_eval_questions]
        splits.test = splits.test[: cfg.data.max_eval_questions]
    return splits


@contextlib.contextmanager
def stage_logging(cfg: KPODConfig, stage: str):
    """Log the stage to `logs/<stage>.log` in the run folder and snapshot the resolved config."""
    paths = RunPaths(cfg.run_dir)
    paths.log_file(stage).parent.mkdir(parents=True, exist_ok=True)
    (paths.root / "configs").mkdir(parents=True, exist_ok=True)
    (paths.root / "configs" / f"{stage}.yaml").write_text(yaml.safe_dump(cfg.snapshot(), sort_keys=False))
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
    from kpod.teacher.importers import import_rationales, reference_rationales

    splits = load_splits(cfg)
    questions = splits.split(split)
    with stage_logging(cfg, "generate") as paths:
        out = paths.rationales(split)
        t = cfg.teacher
        if t.kind == "reference":
            records = reference_rationales(questions)
            summary = {"teacher": "reference"}
        elif t.kind == "file":
            records, unmatched = import_rationales(t.import_path, questions, t.import_format, split)
            summary = {"teacher": f"file:{t.import_path}", "unmatched_entries": unmatched}
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
                "kept_for_training": correct if t.filter_incorrect else len(records),
            }
        )
        write_json(paths.root / "rationales" / f"{split}.summary.json", summary)
        log.info("wrote %d rationales (%d correct) to %s", len(records), correct, out)
        return summary


def train_token_weighting(cfg: KPODConfig) -> dict:
    from kpod.weighting.train import train_weighting

    with stage_logging(cfg, "train_token_weighting"):
        return train_weighting(cfg)


def calculate_difficulties(cfg: KPODConfig) -> dict:
    from kpod.curriculum.difficulty import compute_difficulties

    with stage_logging(cfg, "calculate_difficulties"):
        return compute_difficulties(cfg)


def cluster(cfg: KPODConfig) -> dict:
    from kpod.curriculum.cluster import cluster_questions
    from kpod.curriculum.schedule import build_schedule_file

    with stage_logging(cfg, "cluster"):
        summary = cluster_questions(cfg)
        if RunPaths(cfg.run_dir).difficulties.is_file():
            summary["schedule"] = build_schedule_file(cfg)
        return summary


def train(cfg: KPODConfig, model_path: str | None = None) -> dict:
    from kpod.student.train import train_student

    with stage_logging(cfg, "train"):
        splits = load_splits(cfg)
        return train_student(cfg, splits, model_path)


def evaluate(cfg: KPODConfig, model_path: str | None = None, split: str | None = None, tag: str | None = None) -> dict:
    """Accuracy of a student on a split. model_path: a `kpod train` output folder, a hub id or a
    local model; default: the run folder's trained student, else the base model."""
    from kpod.artifacts import write_eval
    from kpod.decoding import evaluate_questions
    from kpod.models import load_student

    split = split or cfg.eval.split
    with stage_logging(cfg, "evaluate") as paths:
        questions = load_splits(cfg).split(split)
        if not questions:
            raise DataError(f"{cfg.dataset} has no {split} split with this split_source")
        source = model_path or (
            str(paths.student) if (paths.student / "kpod_student.json").is_file() else cfg.student.model
        )
        model, tokenizer = load_student(source, cfg.student.dtype)
        metrics, predictions = evaluate_questions(
            model, tokenizer, questions, cfg.eval.max_new_tokens, cfg.eval.batch_size
        )
        metrics.update({"model": source, "split": split, "dataset": cfg.dataset})
        folder = paths.eval_dir(split if tag is None else f"{split}-{tag}")
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


# ---------------------------------------------------------------- full pipeline


def _hash(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            digest.update(part.read_bytes() if part.is_file() else b"<missing>")
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _stage_inputs(cfg: KPODConfig, stage: str, model_path: str | None = None) -> tuple[list, list[Path]]:
    """(what the stage reads: config sections and input files; the files it writes): its up-to-date check."""
    p = RunPaths(cfg.run_dir)
    c = cfg.snapshot()
    common = [c["dataset"], c["data"], c["seed"]]
    if stage == "generate":
        return common + [c["teacher"]], [p.rationales("train")]
    # a stage's key holds every config section it reads (whole sections: a field read by a stage and
    # missing from its key would let a changed setting reuse a stale output)
    selection = [c["train"]["include_incorrect"]]
    if stage == "train_token_weighting":
        return common + selection + [c["weighting"], c["student"], p.rationales("train")], [p.weights]
    if stage == "calculate_difficulties":
        return common + selection + [
            c["difficulty"],
            c["weighting"]["overlap"],
            c["student"],
            p.rationales("train"),
            p.weights,
        ], [p.difficulties]
    if stage == "cluster":
        return common + selection + [
            c["cluster"],
            c["schedule"],
            c["train"]["epochs"],
            c["student"]["model"],
            p.rationales("train"),
            p.difficulties,
        ], [p.clusters, p.schedule]
    if stage == "train":
        return common + [
            c["method"],
            c["student"],
            c["train"],
            c["schedule"],
            c["weighting"]["overlap"],
            model_path,
            p.rationales("train"),
            p.weights,
            p.schedule,
        ], [p.student / "kpod_student.json"]
    # the student's files by name, size and modification time: a retrained student is re-evaluated
    # even when its settings (kpod_student.json) are unchanged, without reading gigabytes to hash them
    return common + [c["eval"], _folder_state(p.student)], [p.eval_dir(cfg.eval.split) / "metrics.json"]


def _folder_state(folder: Path) -> list:
    files = sorted(f for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else []
    return [(str(f.relative_to(folder)), (stat := f.stat()).st_size, stat.st_mtime_ns) for f in files]


def full_pipeline(cfg: KPODConfig, model_path: str | None = None, force: bool = False) -> dict:
    paths = RunPaths(cfg.run_dir)
    manifest_file = paths.root / "stages.json"
    manifest = read_json(manifest_file, "delete it: every stage then reruns once") if manifest_file.is_file() else {}
    stages = [s for s in STAGES if cfg.method == "kpod" or s in ("generate", "train", "evaluate")]
    results = {}
    for stage in stages:
        parts, outputs = _stage_inputs(cfg, stage, model_path)
        key = _hash(*parts)
        if not force and manifest.get(stage) == key and all(o.is_file() for o in outputs):
            log.info("stage %s is up to date, skipped", stage)
            results[stage] = "skipped"
            continue
        manifest.pop(stage, None)
        if stage == "train" and manifest.get("train_started") != key:
            # checkpoints of a run with other inputs or settings must not be resumed
            import shutil

            shutil.rmtree(paths.checkpoints, ignore_errors=True)
            manifest["train_started"] = key
        write_json(manifest_file, manifest)
        if stage == "train":
            results[stage] = train(cfg, model_path)
        elif stage == "evaluate":
            results[stage] = evaluate(cfg)
        else:
            results[stage] = STAGE_FUNCTIONS[stage](cfg)
        manifest[stage] = key
        write_json(manifest_file, manifest)
    return results


STAGE_FUNCTIONS = {
    "generate": generate,
    "train_token_weighting": train_token_weighting,
    "calculate_difficulties": calculate_difficulties,
    "cluster": cluster,
    "train": train,
    "evaluate": evaluate,
}
