"""One placement rule: every stage that runs a model places it through kpod.placement, in its dtype."""

import inspect
import json
import math

import pytest
import torch
from conftest import TINY_RUN_SETTINGS

from kpod import pipeline, placement
from kpod.config import load_config
from kpod.student.recipe import accelerator_defaults
from kpod.weighting.faithfulness import measure_faithfulness


def test_the_default_dtype_is_bf16_on_a_gpu_that_has_it_and_float32_elsewhere(monkeypatch):
    assert placement.dtype_name(None, torch.device("cpu")) == "float32"
    assert placement.dtype_name("bfloat16", torch.device("cpu")) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert placement.dtype_name(None, torch.device("cuda", 0)) == "bfloat16"
    assert placement.dtype_name("float32", torch.device("cuda", 0)) == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert placement.dtype_name(None, torch.device("cuda", 0)) == "float32"


def test_the_trainer_autocasts_to_the_placement_dtype_and_trainer_args_win(tiny_llama, tmp_path):
    base = [f"student.model={tiny_llama}", f"output_dir={tmp_path}"]
    assert accelerator_defaults(load_config(overrides=base)) == {}  # float32 and plain batches on this CPU machine
    assert accelerator_defaults(load_config(overrides=base + ["student.dtype=bfloat16"])) == {"bf16": True}
    from kpod.artifacts import RunPaths
    from kpod.student.recipe import training_arguments

    cfg = load_config(overrides=base + ["student.dtype=bfloat16", "train.trainer_args.bf16=false"])
    assert training_arguments(cfg, RunPaths(tmp_path)).bf16 is False


def test_on_a_gpu_the_trainer_groups_lengths_and_feeds_from_workers(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(placement, "device", lambda: torch.device("cuda", 0))
    defaults = accelerator_defaults(load_config(overrides=[f"student.model={tiny_llama}", f"output_dir={tmp_path}"]))
    assert defaults == {
        "bf16": True,
        "train_sampling_strategy": "group_by_length",
        "dataloader_num_workers": 2,
        "dataloader_persistent_workers": True,
    }


def test_a_record_made_when_float32_was_the_default_still_holds_on_a_cpu(tiny_llama, tmp_path):
    cfg = load_config(overrides=[f"student.model={tiny_llama}", f"output_dir={tmp_path}"])
    assert cfg.student.dtype is None
    assert pipeline.effective_value(cfg, "student.dtype") == "float32"
    bf16 = load_config(overrides=[f"student.model={tiny_llama}", "student.dtype=bfloat16"])
    assert pipeline.effective_value(bf16, "student.dtype") == "bfloat16"


@pytest.fixture(scope="module")
def placed_run(tmp_path_factory, tiny_llama, monkeypatch_module):
    """Every stage of a tiny KPOD run in bfloat16 on the CPU, recording which kpod modules asked
    kpod.placement for the device, and the dtype of every model placed."""
    callers: set[str] = set()
    original = placement.device

    def recording_device():
        callers.update(f.frame.f_globals.get("__name__", "") for f in inspect.stack()[1:12])
        return original()

    monkeypatch_module.setattr(placement, "device", recording_device)
    run = tmp_path_factory.mktemp("placed") / "run"
    overrides = TINY_RUN_SETTINGS + [f"student.model={tiny_llama}", f"output_dir={run}", "student.dtype=bfloat16"]
    pipeline.full_pipeline(load_config(overrides=overrides))
    measure_faithfulness(run, progress=False, fraction=0.2, draws=1, dtype="bfloat16")
    return run, callers


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_every_stage_that_runs_a_model_places_it_through_the_rule(placed_run):
    _, callers = placed_run
    for stage in (
        "kpod.weighting.train",  # the keypoint module and its reasoner
        "kpod.weighting.faithfulness",  # the judge
        "kpod.curriculum.difficulty",
        "kpod.student.recipe",  # training
        "kpod.decoding",  # evaluation
    ):
        assert stage in callers, f"{stage} never asked kpod.placement for the device"


def test_every_stage_runs_and_stays_finite_in_bf16(placed_run):
    run, _ = placed_run
    weights = [
        w for line in (run / "weights/weights.jsonl").read_text().splitlines() for w in json.loads(line)["weights"]
    ]
    assert weights and all(0 <= w <= 1 for w in weights)
    summary = json.loads((run / "train/summary.json").read_text())
    assert math.isfinite(summary["train_loss"])
    difficulties = [
        d
        for line in (run / "difficulty/difficulties.jsonl").read_text().splitlines()
        for d in json.loads(line)["difficulties"]
    ]
    assert difficulties and all(math.isfinite(d) for d in difficulties)
    assert json.loads((run / "weights/faithfulness.json").read_text())["rationales"] > 0
    assert json.loads((run / "eval/test/metrics.json").read_text())["total"] == 2
