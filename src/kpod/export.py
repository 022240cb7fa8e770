"""`kpod export`: a run's student as a standalone Hugging Face model folder with a model card, and its
token weights as a dataset other trainers can read.

    kpod export RUN --out DIR [--merge] [--push-to-hub REPO_ID]
    kpod export RUN --weights FILE.parquet (or a folder: a `datasets` save_to_disk folder)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from kpod.artifacts import (
    RunPaths,
    atomic_write_text,
    rationale_key,
    read_json,
    read_rationales,
    read_schedule,
    read_weights,
)
from kpod.files import DataError
from kpod.layout import DistillExample, split_texts
from kpod.models import STUDENT_INFO, load_tokenizer, load_trained_student, merge_adapter, named_model_is_seq2seq
from kpod.rationale import ANSWER_SENTENCE, PROMPT_TEMPLATE
from kpod.stage_records import require_fresh

CITATION = """@inproceedings{feng2024keypoint,
  title     = {Keypoint-based Progressive Chain-of-Thought Distillation for LLMs},
  author    = {Feng, Kaituo and Li, Changsheng and Zhang, Xiaolu and Zhou, Jun and Yuan, Ye and Wang, Guoren},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  year      = {2024}
}"""


def export_student(run_dir: str | Path, out: str | Path, merge: bool = False, push_to_hub: str | None = None) -> dict:
    """Write the run's student to `out`: weights (LoRA merged when `merge`, else the adapter), tokenizer,
    generation config (greedy, the run's max_new_tokens) and README.md (the model card)."""
    from transformers import GenerationConfig

    paths, out = RunPaths(run_dir), Path(out)
    check_export_target(out, paths.root)
    require_fresh(paths.root, "train")
    info = read_json(paths.student / STUDENT_INFO, "train the student first (`kpod train`)", ("base_model",))
    config = _run_config(paths)
    model = load_trained_student(paths.student)  # on the CPU, in float32: saved, not run
    tokenizer = load_tokenizer(str(paths.student))
    adapter = bool(info.get("adapter"))
    if merge:
        model = merge_adapter(model)
    staging = _staging_folder(out, paths.root)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    max_new_tokens = (config.get("eval") or {}).get("max_new_tokens", 256)
    GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
    ).save_pretrained(staging)
    kind = "adapter" if adapter and not merge else ("merged" if adapter else "full")
    atomic_write_text(staging / "README.md", model_card(paths, config, info=info, kind=kind))
    _replace_with(staging, out, paths.root)
    result = {"out": str(out), "weights": kind, "base_model": info["base_model"]}
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        result["pushed"] = api.upload_folder(folder_path=str(out), repo_id=push_to_hub).commit_url
    return result


EXPORT_MARKER = ".kpod-export.json"


def check_export_target(out: Path, run_dir: Path) -> None:
    """An export writes a new folder or replaces an earlier kpod export (it holds EXPORT_MARKER), never
    anything else: not a run folder, not a folder that holds the run, not a folder with other files."""
    out, run = Path(out).resolve(), Path(run_dir).resolve()
    if out == run or run.is_relative_to(out):
        raise DataError(f"{out}: this is the run folder or holds it; export into a new folder (e.g. {run.name}-export)")
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: a file is there; export into a new folder")
    if (out / "stages.json").exists() or (out / "configs").is_dir():
        raise DataError(f"{out}: a kpod run folder is there; export into a new folder")
    if any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise DataError(
            f"{out}: the folder holds other files and no earlier kpod export ({EXPORT_MARKER}); nothing was "
            "written. Export into a new or empty folder"
        )


def _staging_folder(out: Path, run_dir: Path) -> Path:
    check_export_target(out, run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.writing-"))
    (staging / EXPORT_MARKER).write_text(json.dumps({"run": str(Path(run_dir).resolve())}) + "\n")
    return staging


def _replace_with(staging: Path, out: Path, run_dir: Path) -> None:
    """Move the finished export into place; an earlier export there is removed only after the check."""
    check_export_target(out, run_dir)
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(old / out.name)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def _run_config(paths: RunPaths) -> dict:
    return paths.stage_config("train")


def model_card(paths: RunPaths, config: dict, info: dict, kind: str) -> str:
    """Base model, method and settings, data and teacher provenance, accuracy, prompt format, citation."""
    train, student = config.get("train") or {}, config.get("student") or {}
    method = config.get("method", "kpod")
    settings = {
        "method": method,
        "epochs": train.get("epochs"),
        "learning_rate": train.get("learning_rate"),
        "batch_size": train.get("batch_size"),
        "lora": f"r={student.get('lora_r')}, alpha={student.get('lora_alpha')}" if student.get("lora") else "no",
    }
    if method == "kpod":
        weighting, schedule = config.get("weighting") or {}, config.get("schedule") or {}
        settings.update(
            {
                "token weighting": f"alpha={weighting.get('alpha')}, estimator={weighting.get('estimator')}",
                "schedule": f"progressive={schedule.get('progressive')}, p={schedule.get('p')}, "
                f"c0_ratio={schedule.get('c0_ratio')}, beta={schedule.get('beta')}, phases={schedule.get('phases')}",
            }
        )
    teacher = _optional_json(paths.rationales_summary("train"))
    accuracy = []
    for metrics_file in sorted(paths.root.glob("eval/*/metrics.json")):
        m = _optional_json(metrics_file)
        if m and "accuracy" in m:
            accuracy.append(
                f"| {m.get('dataset', '?')} | {metrics_file.parent.name} | {m['accuracy']:.2f}% | {m['correct']}/{m['total']} |"
            )
    loading = {
        "adapter": "a PEFT LoRA adapter: `peft.AutoPeftModelForCausalLM.from_pretrained(folder)` (or "
        "`AutoPeftModelForSeq2SeqLM`) loads it on its base model",
        "merged": "the LoRA adapter merged into the base weights: plain `transformers` loads it "
        "(`AutoModelForCausalLM` / `AutoModelForSeq2SeqLM`), no peft needed",
        "full": "fully fine-tuned weights: plain `transformers` loads them",
    }[kind]
    rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    teacher_line = (
        f"{teacher.get('rationales')} rationales from `{teacher.get('teacher')}` for {teacher.get('questions')} "
        f"questions, {teacher.get('correct')} with the gold answer (only those are used unless "
        "`train.include_incorrect`)"
        if teacher
        else "not recorded"
    )
    return f"""---
base_model: {info["base_model"]}
library_name: {"peft" if kind == "adapter" else "transformers"}
tags: [kpod, chain-of-thought, distillation]
---
# {Path(info["base_model"]).name} distilled with {"KPOD" if method == "kpod" else "Std-CoT"} on {config.get("dataset", "?")}

A student trained with kpod by {"KPOD (Keypoint-based Progressive Chain-of-Thought Distillation, ICML 2024): token-weighted, progressive distillation of teacher rationales" if method == "kpod" else "standard chain-of-thought distillation (Std-CoT, the baseline)"}.

- Base model: `{info["base_model"]}`
- Weights: {loading}
- Data: {config.get("dataset", "?")} training questions ({(config.get("data") or {}).get("split_source", "mcc_kd")} splits); teacher: {teacher_line}

## Settings
| setting | value |
|---|---|
{rows}

## Accuracy (greedy decoding, answer after "the answer is")
| dataset | split | accuracy | correct |
|---|---|---|---|
{chr(10).join(accuracy) or "| not evaluated | | | |"}

## Prompt format
The student was trained on, and should be prompted with:

    {PROMPT_TEMPLATE}

It writes its reasoning and ends with `{ANSWER_SENTENCE}`; decode greedily (generation_config.json) and
read the answer after "the answer is".

## Citation
```bibtex
{CITATION}
```
"""


def _optional_json(path: Path) -> dict | None:
    return read_json(path, "delete it and rerun the stage that writes it") if path.is_file() else None


def export_weights(run_dir: str | Path, out: str | Path) -> dict:
    """The run's token weights as a dataset: per rationale its question, rationale, answer, the student
    tokenizer's tokens with character offsets into the rationale and their weights, and the phase-0
    split of the schedule (input steps and the source/target texts the student trains on first)."""
    import datasets

    paths, out = RunPaths(run_dir), Path(out)
    require_fresh(paths.root, "train_token_weighting")
    require_fresh(paths.root, "cluster")
    weights = read_weights(paths.weights)
    schedule = read_schedule(paths.schedule).input_steps if paths.schedule.is_file() else {}
    student = (paths.stage_config("train_token_weighting").get("student") or {}).get("model")
    seq2seq = named_model_is_seq2seq(student) if student else None
    rows = []
    for r in read_rationales(paths.rationales("train"), include_incorrect=True):
        key = rationale_key(r)
        if key not in weights:
            continue
        w = weights[key]
        rationale = "".join(r["steps"])
        steps0 = (schedule.get(key) or [0])[0]
        source, target, _ = split_texts(DistillExample(key, r["question"], answer=r["gold"], steps=r["steps"]), steps0)
        rows.append(
            {
                "key": key,
                "question": r["question"],
                "rationale": rationale,
                "answer": r["gold"],
                "correct": bool(r.get("correct", True)),
                "student": student,
                "seq2seq": seq2seq,
                "tokens": [rationale[a:b] for a, b in w.offsets],
                "offsets": [list(o) for o in w.offsets],
                "weights": list(w.weights),
                "phase0_input_steps": steps0,
                "phase0_source": source,
                "phase0_target": target,
            }
        )
    if not rows:
        raise DataError(f"{paths.weights}: no weights for the run's rationales; rerun `kpod train_token_weighting`")
    dataset = datasets.Dataset.from_list(rows)
    if out.suffix == ".parquet":
        if out.is_dir():
            raise DataError(f"{out}: a folder is there; name a new .parquet file")
        out.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(out))
    else:
        staging = _staging_folder(out, paths.root)
        dataset.save_to_disk(str(staging / "dataset"))
        for item in (staging / "dataset").iterdir():
            item.rename(staging / item.name)
        (staging / "dataset").rmdir()
        _replace_with(staging, out, paths.root)
    return {"out": str(out), "rationales": len(rows)}
