"""What each stage used, in `stages.json`, and whether that record still holds.

A stage's record holds the settings it declares in the stage table (`kpod.stages`, with their values),
the digests of the files it read (run-folder files by their place in the folder; the dataset's folders
by their files' names and bytes; a local base model by its files' names, sizes and modification times)
and its arguments. A record no longer holds when any of these changed, or when a setting it declares
but did not record (one added to kpod since) has left its default. Stages run by hand, and commands
that read a stage's output, check the whole chain of producers above what they read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

from kpod import placement
from kpod.artifacts import RunPaths, read_json
from kpod.config import KPODConfig
from kpod.data.datasets import dataset_folders, default_data_dir
from kpod.files import DataError
from kpod.stages import BY_NAME, HOW_TO_RUN, PRODUCERS

log = logging.getLogger("kpod")

# where files and logs go and how to run, not what a stage computes (kpod.stages.HOW_TO_RUN)
NOT_INPUTS = HOW_TO_RUN


class StaleInputError(DataError):
    """A stage's input file was computed from other settings or files than the ones in force now."""


def _outside_inputs(cfg: KPODConfig, stage: str) -> dict[str, Path]:
    """Inputs outside the run folder, by role: a record stays valid when they move with their files."""
    c = cfg.snapshot()
    files = {}
    if stage == "generate" and c["teacher"]["kind"] == "file" and c["teacher"]["import_path"]:
        path, root = Path(c["teacher"]["import_path"]), RunPaths(cfg.run_dir).root
        files[str(path.relative_to(root)) if path.is_relative_to(root) else str(path)] = path  # as records held it
    if stage in ("generate", "train") or stage.startswith("evaluate/"):
        root = Path(c["data"]["data_dir"]) if c["data"]["data_dir"] else default_data_dir()
        if root is not None:
            for folder in dataset_folders(c["dataset"], root, c["data"]["split_source"]):
                files[f"{ROLE_PREFIXES[0]}{folder.relative_to(root)}/"] = folder
    model = Path(c["student"]["model"])
    if stage != "generate" and model.is_dir():
        files[ROLE_PREFIXES[1]] = model
    return files


ROLE_PREFIXES = ("dataset ", "base model folder")


def _run_folder_inputs(cfg: KPODConfig, stage: str) -> list[Path]:
    record = BY_NAME.get(stage)
    return record.reads(RunPaths(cfg.run_dir), cfg.snapshot()) if record else []


def outputs(cfg: KPODConfig, stage: str) -> list[Path]:
    p = RunPaths(cfg.run_dir)
    if stage.startswith("evaluate/"):
        return [p.eval_dir(stage.split("/", 1)[1]) / "metrics.json"]
    return BY_NAME[stage].writes(p)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(path: Path, by_content: bool = False) -> str:
    """A file by its bytes; a folder by its files' names and bytes (by_content: datasets, a few MB, so a
    copied or re-extracted dataset keeps its runs), or else by their names, sizes and modification
    times (a model folder: a retrained student is re-evaluated without reading gigabytes to hash it)."""
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return _file_digest(path)[:16]
    files = [f for f in sorted(path.rglob("*")) if f.is_file()]
    if by_content:
        state = [(str(f.relative_to(path)), _file_digest(f)) for f in files]
    else:
        state = [(str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def current_inputs(cfg: KPODConfig, stage: str, arguments: dict) -> dict:
    """Each input's digest: run-folder files by their place in the folder (a moved or copied run folder
    stays valid), the others by their role."""
    root = RunPaths(cfg.run_dir).root
    files = {str(f.relative_to(root)): f for f in _run_folder_inputs(cfg, stage)}
    if stage.startswith("evaluate/") and arguments.get("model_path") is None:
        files["student"] = RunPaths(cfg.run_dir).student
    files.update(_outside_inputs(cfg, stage))
    return {name: _digest(f, by_content=name.startswith(ROLE_PREFIXES[0])) for name, f in files.items()}


# settings whose meaning depends on the machine: recorded and compared as what they resolved to (the
# default dtype is float32 on a CPU, as before it was a rule, so records made then still hold there)
_RESOLVED = {"student.dtype": placement.dtype_name}


def effective_value(cfg: KPODConfig, dotted: str):
    """A config field's value as a stage computes with it."""
    value = cfg.value_at(dotted)
    return _RESOLVED[dotted](value) if dotted in _RESOLVED else value


def read_manifest(run_dir: Path) -> dict:
    path = RunPaths(run_dir).manifest
    if not path.is_file():
        return {}
    manifest = read_json(path, "delete it: every stage then reruns once")
    if not isinstance(manifest, dict) or any(not isinstance(v, dict) for v in manifest.values()):
        raise DataError(
            f"{path}: not a stage manifest written by this version of kpod; delete it (every stage then reruns once)"
        )
    return manifest


@functools.cache
def _defaults() -> KPODConfig:
    return KPODConfig()


def declared_uses(cfg: KPODConfig, stage: str) -> list[str]:
    """The settings `stage` (evaluate/<split> too) computes from under this config, as the stage table declares."""
    return sorted(set(BY_NAME[stage.split("/")[0]].uses(RunPaths(cfg.run_dir), cfg.snapshot())) - NOT_INPUTS)


def undeclared_reads(cfg: KPODConfig, stage: str, reads: set[str]) -> list[str]:
    """Settings the stage read while it ran but does not declare: a stage table entry to correct."""
    return sorted(reads - set(declared_uses(cfg, stage)) - NOT_INPUTS)


def new_record(cfg: KPODConfig, stage: str, inputs: dict, arguments: dict) -> dict:
    """A stage's record: the settings it declares with their values, its input digests, its arguments."""
    uses = {d: effective_value(cfg, d) for d in declared_uses(cfg, stage)}
    return {"uses": uses, "inputs": inputs, "arguments": arguments}


def why_stale(cfg: KPODConfig, stage: str, manifest: dict, arguments: dict | None = None) -> str | None:
    """None when the stage's recorded run still holds for this config and these input files, else why not."""
    record = manifest.get(stage)
    if record is None or "uses" not in record:
        return "it has not run in this folder"
    missing = [str(o) for o in outputs(cfg, stage) if not o.is_file()]
    if missing:
        return f"its output {missing[0]} is missing"
    uses = declared_uses(cfg, stage)
    for dotted in uses:
        if dotted in record["uses"] and record["uses"][dotted] != effective_value(cfg, dotted):
            return f"{dotted} changed ({record['uses'][dotted]!r} -> {effective_value(cfg, dotted)!r})"
    for dotted in uses:  # declared now, not then: a setting newer than the run, which ran with its default
        now, default = effective_value(cfg, dotted), effective_value(_defaults(), dotted)
        if dotted not in record["uses"] and now != default:
            return f"{dotted} is {now!r}, a setting its run did not record (it ran with the default, {default!r})"
    if arguments is not None and record.get("arguments", {}) != arguments:
        return f"its arguments changed ({record.get('arguments')} -> {arguments})"
    now_inputs = current_inputs(cfg, stage, record.get("arguments", {}))
    for name, digest in now_inputs.items():
        if record["inputs"].get(name) != digest:
            return f"{name} changed since it ran"
    return None


def check_upstream(cfg: KPODConfig, stage: str, manifest: dict) -> None:
    """A stage run by hand refuses input files computed from other settings or older files than now,
    all the way up: train refuses a schedule whose difficulties were computed at another length."""
    problem = _stale_upstream(cfg, stage, manifest, seen=set())
    if problem:
        path, producer, reason = problem
        requested = RunPaths(cfg.run_dir).write_config_snapshot("requested", cfg.snapshot())
        raise StaleInputError(
            f"{path} is out of date for this config: {reason}. Run `kpod {producer} --config {requested}` "
            f"(this command's config), or `kpod full_pipeline --config {requested}`, which reruns what is stale, first"
        )


def _stale_upstream(cfg: KPODConfig, stage: str, manifest: dict, seen: set) -> tuple[Path, str, str] | None:
    root = RunPaths(cfg.run_dir).root
    for path in _run_folder_inputs(cfg, stage):
        producer = PRODUCERS.get(path.parent.name) if path.parent.parent == root else None
        if producer is None or producer in seen or not path.is_file():
            continue
        seen.add(producer)
        if producer not in manifest:
            log.warning("%s has no record of how it was made (an older run folder or a copied file): used as is", path)
            continue
        reason = why_stale(cfg, producer, manifest)
        if reason:
            return path, producer, reason
        deeper = _stale_upstream(cfg, producer, manifest, seen)
        if deeper:
            return deeper
    return None


def require_fresh(run_dir: str | Path, stage: str) -> None:
    """For commands that read a stage's output outside the pipeline (report, faithfulness, show_weights,
    export): refuse the output when its record no longer holds for the stage's own settings, or
    anything upstream of it changed since."""
    from kpod.config import load_config

    paths = RunPaths(run_dir).require_run()
    manifest = read_manifest(paths.root)
    snapshot = paths.config_snapshot(stage)
    if stage not in manifest or not snapshot.is_file():
        return  # the stage has not run here (a Std-CoT run has no weights): the reader says what is missing
    cfg = load_config(snapshot, {"output_dir": str(paths.root)})
    reason = why_stale(cfg, stage, manifest)
    problem = (outputs(cfg, stage)[0], stage, reason) if reason else _stale_upstream(cfg, stage, manifest, set())
    if problem:
        path, producer, reason = problem
        raise StaleInputError(
            f"{path} is out of date: {reason}. Rerun what is stale with the run's own config first: "
            f"`kpod full_pipeline --config {snapshot}`"
        )


def stage_status(run_dir: str | Path, cfg: KPODConfig | None = None) -> list[tuple[str, str | None]]:
    """(stage, None when current, else why not) for every stage of the run, against `cfg` or, by default,
    the run's newest config snapshot (the config of the last stage command in the folder)."""
    from kpod.config import load_config

    paths = RunPaths(run_dir).require_run()
    if cfg is None:
        snapshots = [p for p in paths.root.glob("configs/*.yaml") if p.stem != "requested"]
        if not snapshots:
            raise DataError(f"{paths.root}: no config snapshot in configs/; pass --config")
        cfg = load_config(max(snapshots, key=lambda p: p.stat().st_mtime), {"output_dir": str(paths.root)})
    manifest = read_manifest(paths.root)
    names = [s.name for s in BY_NAME.values() if s.name != "evaluate" and (cfg.method == "kpod" or not s.kpod_only)]
    names += sorted(k for k in manifest if k.startswith("evaluate/")) or [f"evaluate/{cfg.eval.split}"]
    arguments = {"train": {"model_path": None}} | {n: {"model_path": None} for n in names if n.startswith("evaluate/")}
    return [(name, why_stale(cfg, name, manifest, arguments.get(name))) for name in names]
