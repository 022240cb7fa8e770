"""Each stage declares the settings it uses (kpod.stages) and records them; a changed setting reruns exactly
the stages that read it while they ran, and a stage run by hand refuses inputs computed from other
settings or older files."""

import json
import os
import re
import shutil
import typing
from pathlib import Path

import pytest
from conftest import TINY_RUN_SETTINGS

from kpod import pipeline, stages
from kpod.config import KPODConfig, leaf_fields, load_config


def _field(dotted: str):
    model: type = KPODConfig
    *sections, leaf = dotted.split(".")
    for name in sections:
        model = model.model_fields[name].annotation
    return model.model_fields[leaf]


# values a setting's type does not suggest; and settings another one must come with to be valid
OTHER_VALUES = {
    "dataset": ["svamp"],
    "student.target_modules": [["q_proj", "v_proj"]],
    "train.trainer_args": [{"warmup_steps": 2}],
}
COMPANIONS = {"eval.backend": ["eval.server_url=http://127.0.0.1:1/v1", "eval.server_model=student"]}


def changed_values(cfg: KPODConfig, dotted: str) -> list:
    """Candidate values different from the current one, most natural first."""
    value = cfg.value_at(dotted)
    if dotted in OTHER_VALUES:
        return OTHER_VALUES[dotted]
    field = _field(dotted)
    choices = [a for a in typing.get_args(field.annotation) if typing.get_origin(a) is typing.Literal]
    literal = typing.get_args(choices[0]) if choices else typing.get_args(field.annotation)
    if typing.get_origin(field.annotation) is typing.Literal:
        literal = typing.get_args(field.annotation)
    candidates = [v for v in literal if isinstance(v, str | int | float | bool) and v != value]
    if isinstance(value, bool):
        candidates += [not value]
    elif isinstance(value, int):
        candidates += [value + 1, value - 1, value * 2, 1, 0]
    elif isinstance(value, float):
        candidates += [value * 0.5, value + 0.1, 0.25, 1.0, 2.0, 0.0]
    elif isinstance(value, str):
        candidates += [value + "x", "sample:2", "tests/x.jsonl"]
    elif isinstance(value, list):
        candidates += [value[:1], value + ["k_proj"], ["q_proj"]]
    elif value is None:
        candidates += [1, 2, 0.5, "q_proj", True, ["q_proj"], "tests/x.jsonl", 100, "float32", "bfloat16"]
    return [c for c in candidates if c != value]


@pytest.fixture(scope="module", params=["llama", "t5"])
def observed_run(request, tmp_path_factory):
    """A finished tiny KPOD run of each student family, with the settings each stage read while it ran
    (kpod.config.record_reads, as the pipeline sees them): (run folder, overrides, reads per stage)."""
    model = request.getfixturevalue(f"tiny_{request.param}")
    run = tmp_path_factory.mktemp(f"observed-{request.param}") / "run"
    overrides = TINY_RUN_SETTINGS + [f"student.model={model}", f"output_dir={run}"]
    reads, check = {}, pipeline.undeclared_reads

    def observe(cfg, stage, read):
        reads[stage] = set(read) - pipeline.NOT_INPUTS
        return check(cfg, stage, read)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "undeclared_reads", observe)
        pipeline.full_pipeline(load_config(overrides=overrides))
    return run, overrides, reads


def test_a_changed_setting_reruns_exactly_the_stages_that_read_it(observed_run):
    """Every leaf setting, changed on a finished run: the stages that rerun are those that read it while
    they ran, on a LLaMA and on a T5 student. What reruns comes from the stage table's declarations;
    what was read comes from the run, so a declaration that is too wide or too narrow fails here."""
    run, overrides, reads = observed_run
    cfg = load_config(overrides=overrides)
    manifest = pipeline.read_manifest(run)
    stages = [s for s in manifest if s != "train_started"]
    assert set(stages) == set(reads) and all(pipeline.why_stale(cfg, s, manifest) is None for s in stages)
    tested, untested = 0, []
    for dotted in leaf_fields(KPODConfig):
        if dotted in pipeline.NOT_INPUTS:
            continue
        changed = None
        for value in changed_values(cfg, dotted):
            try:
                changed = load_config(
                    overrides=overrides + [f"{dotted}={json.dumps(value)}"] + COMPANIONS.get(dotted, [])
                )
            except ValueError:
                continue
            # a value that resolves to the same one on this machine (dtype None is float32 on a CPU) changes nothing
            if pipeline.effective_value(changed, dotted) != pipeline.effective_value(cfg, dotted):
                break
            changed = None
        if changed is None:
            untested.append(dotted)
            continue
        tested += 1
        stale = {s for s in stages if pipeline.why_stale(changed, s, manifest)}
        readers = {s for s in stages if dotted in reads[s]}
        assert stale == readers, f"{dotted}: reruns {sorted(stale)}, read by {sorted(readers)}"
    assert not untested, f"no other valid value found for {untested}"
    assert tested == len(leaf_fields(KPODConfig)) - len(pipeline.NOT_INPUTS)


def test_the_fields_named_in_the_stale_output_reports_are_recorded(finished_tiny_run):
    run, _ = finished_tiny_run
    reads = {stage: set(record.get("uses", ())) for stage, record in pipeline.read_manifest(run).items()}
    for stage in ("calculate_difficulties", "train"):
        assert {"weighting.overlap", "student.max_target_tokens", "student.max_input_tokens"} <= reads[stage], stage
    assert {"student.lora_r", "student.lora_alpha", "student.model"} <= reads["train_token_weighting"]
    assert all("student.dtype" in reads[s] for s in ("calculate_difficulties", "train", "evaluate/test"))
    assert {"train.include_incorrect"} <= reads["cluster"] & reads["train"]
    assert "eval.batch_size" in reads["evaluate/test"]
    assert not any("eval.batch_size" in reads[s] for s in reads if not s.startswith("evaluate"))
    assert not any(d.startswith("teacher.") and d != "teacher.kind" for d in reads["generate"])


def test_a_stage_run_by_hand_refuses_stale_inputs(finished_tiny_run, tmp_path):
    run, overrides = finished_tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    overrides = [o for o in overrides if not o.startswith("output_dir=")] + [f"output_dir={copy}"]
    # new teacher rationales: the weights and the schedule were computed from the old ones
    rationales = copy / "rationales/train.jsonl"
    original = rationales.read_bytes()
    rationales.write_text("\n".join(original.decode().splitlines()[:-1]) + "\n")
    with pytest.raises(
        pipeline.StaleInputError, match=r"weights\.jsonl is out of date.*rationales/train\.jsonl changed"
    ):
        pipeline.train(load_config(overrides=overrides))
    rationales.write_bytes(original)
    # a setting of an earlier stage changed since it ran
    with pytest.raises(pipeline.StaleInputError, match=r"schedule\.json is out of date.*schedule\.p changed"):
        pipeline.train(load_config(overrides=overrides + ["schedule.p=2"]))
    # full_pipeline reruns what is stale instead, and a new starting model reruns training
    rationales.write_text("\n".join(original.decode().splitlines()[:-1]) + "\n")
    manifest = pipeline.read_manifest(copy)
    cfg = load_config(overrides=overrides)
    assert "changed" in pipeline.why_stale(cfg, "train_token_weighting", manifest)
    assert pipeline.why_stale(cfg, "generate", manifest) is None
    assert "arguments" in pipeline.why_stale(load_config(overrides=overrides), "train", manifest, {"model_path": "x"})


# Settings read outside any stage: the split full_pipeline evaluates.
USED_BY_THE_PIPELINE = {"eval.split"}


def test_every_setting_is_used_by_some_stage_or_says_how_to_run():
    """A setting no stage uses and that says nothing about how to run does nothing: remove it or make it work.
    Each branch that brings settings of its own is visited (teacher kinds, embeddings, backends, dev checks)."""
    variants = [
        [],
        ["teacher.kind=openai"],
        ["teacher.kind=file", "teacher.import_path=x.jsonl"],
        ["cluster.embedding=glove", "cluster.embedding_path=x.txt"],
        ["eval.backend=server", "eval.server_url=http://localhost:1", "eval.server_model=student"],
        ["train.eval_every=5", "weighting.reasoner_warmup_epochs=1"],
    ]
    used = set(pipeline.NOT_INPUTS) | USED_BY_THE_PIPELINE
    for variant in variants:
        cfg = load_config(overrides=variant)
        used |= {d for stage in stages.BY_NAME for d in pipeline.declared_uses(cfg, stage)}
    assert not set(leaf_fields(KPODConfig)) - used, (
        f"settings nothing uses: {sorted(set(leaf_fields(KPODConfig)) - used)}"
    )


def test_readers_of_a_stage_output_refuse_it_when_stale(finished_tiny_run, tmp_path):
    """report, faithfulness, show_weights and export read the weights only while they still hold: after
    the rationales were regenerated their offsets would land on other text."""
    from kpod.cli import main
    from kpod.export import export_weights
    from kpod.pages import show_weights
    from kpod.report import write_report
    from kpod.weighting.faithfulness import measure_faithfulness

    run, _ = finished_tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    write_report(copy)  # fresh: reads fine
    rationales = copy / "rationales/train.jsonl"
    rows = rationales.read_text().splitlines()
    rationales.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same rationales in another order
    stale = r"weights\.jsonl is out of date: rationales/train\.jsonl changed"
    for read in (
        lambda: write_report(copy),
        lambda: measure_faithfulness(copy, progress=False),
        lambda: show_weights(copy),
        lambda: export_weights(copy, tmp_path / "w.parquet"),
    ):
        with pytest.raises(pipeline.StaleInputError, match=stale):
            read()
    assert main(["report", str(copy)]) == 2


def test_a_hand_run_stage_checks_the_whole_chain_above_it(finished_tiny_run, tmp_path):
    """train reads the schedule, whose cluster record holds; but the difficulties under it were
    computed at another student.max_target_tokens."""
    run, overrides = finished_tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    overrides = [o for o in overrides if not o.startswith("output_dir=")] + [f"output_dir={copy}"]
    with pytest.raises(
        pipeline.StaleInputError,
        match=r"difficulties\.jsonl is out of date for this config: student\.max_target_tokens changed",
    ):
        pipeline.train(load_config(overrides=overrides + ["student.max_target_tokens=200"]))


def test_inputs_outside_the_run_folder_are_fingerprinted(tmp_path, tiny_llama, data_dir, monkeypatch):
    """A base model folder changed in place, and a dataset folder given through KPOD_DATA_DIR whose files
    changed, make the stages that read them stale; the same files elsewhere do not."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    data = tmp_path / "data"
    shutil.copytree(data_dir / "gsm8k", data / "gsm8k")
    shutil.copytree(data_dir / "splits_mcc_kd" / "GSM8K", data / "splits_mcc_kd" / "GSM8K")
    monkeypatch.setenv("KPOD_DATA_DIR", str(data))
    cfg = load_config(overrides=TINY_RUN_SETTINGS + [f"student.model={model}", f"output_dir={tmp_path / 'run'}"])
    pipeline.generate(cfg)
    pipeline.train_token_weighting(cfg)
    manifest = pipeline.read_manifest(cfg.run_dir)
    assert pipeline.why_stale(cfg, "generate", manifest) is None
    assert pipeline.why_stale(cfg, "train_token_weighting", manifest) is None
    for file in (data / "gsm8k").iterdir():  # the same files, re-extracted: a dataset is known by its bytes
        os.utime(file, (1, 1))
    assert pipeline.why_stale(cfg, "generate", manifest) is None
    with (data / "gsm8k/test.jsonl").open("a") as f:
        f.write('{"question": "One more?", "answer": "1 #### 1"}\n')
    assert pipeline.why_stale(cfg, "generate", manifest) == "dataset gsm8k/ changed since it ran"
    record = pipeline.current_inputs(cfg, "evaluate/test", {"model_path": None})
    assert set(record) == {"student", "dataset gsm8k/", "dataset splits_mcc_kd/GSM8K/", "base model folder"}
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # rewritten in place: same name and size, new time
    assert pipeline.why_stale(cfg, "train_token_weighting", manifest) == "base model folder changed since it ran"
    # a record without them (no earlier run-folder format is kept) does not hold
    for record in manifest.values():
        record["inputs"] = {k: v for k, v in record.get("inputs", {}).items() if not k.startswith(("dataset", "base"))}
    assert pipeline.why_stale(cfg, "generate", manifest) == "dataset gsm8k/ changed since it ran"


def test_the_stage_table_drives_the_cli_the_dispatch_and_the_records():
    from kpod import cli, stages

    names = [s.name for s in stages.STAGES]
    assert names == ["generate", "train_token_weighting", "calculate_difficulties", "cluster", "train", "evaluate"]
    assert list(pipeline.STAGE_FUNCTIONS) == names
    assert cli.STAGE_NAMES == (*names, "full_pipeline")
    assert set(cli.build_parser()._subparsers._group_actions[0].choices) >= set(cli.STAGE_NAMES)
    assert stages.PRODUCERS == {
        "rationales": "generate",
        "weights": "train_token_weighting",
        "difficulty": "calculate_difficulties",
        "schedule": "cluster",
    }
    assert [s.name for s in stages.STAGES if not s.kpod_only] == ["generate", "train", "evaluate"]


def test_a_setting_newer_than_a_record_reruns_the_stage_only_when_it_is_used(finished_tiny_run):
    """A record cannot hold a setting its kpod did not have: a run made before a setting existed must not
    pass for that setting away from its default (it ran the default's behaviour), and must still hold
    while the default is kept. Only the stages that declare the setting rerun."""
    run, overrides = finished_tiny_run
    manifest = pipeline.read_manifest(run)
    default, linear = load_config(overrides=overrides), load_config(overrides=overrides + ["schedule.kind=linear"])
    assert pipeline.why_stale(linear, "cluster", manifest) == "schedule.kind changed ('kpod' -> 'linear')"
    # records made before a (here simulated) later setting existed
    without_floor = {
        stage: dict(record, uses={d: v for d, v in record["uses"].items() if d != "train.weight_floor"})
        for stage, record in manifest.items()
        if "uses" in record
    }
    floor = load_config(overrides=overrides + ["train.weight_floor=0.5"])
    assert all(pipeline.why_stale(default, stage, without_floor) is None for stage in without_floor)
    newer = "train.weight_floor is 0.5, a setting its run did not record (it ran with the default, 0.0)"
    assert pipeline.why_stale(floor, "train", without_floor) == newer
    assert [s for s in without_floor if pipeline.why_stale(floor, s, without_floor)] == ["train"]


def test_an_evaluation_setting_reruns_only_evaluate_and_readers_follow(finished_tiny_run, tmp_path, capsys):
    """Issue 37's case: one evaluation setting changed on a finished run reruns evaluate alone; report,
    show_weights and faithfulness then read the run as it now is."""
    from kpod.cli import main

    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run[0], run)
    overrides = finished_tiny_run[1] + [f"output_dir={run}", "data.max_eval_questions=3"]
    results = pipeline.full_pipeline(load_config(overrides=overrides))
    assert {k for k, v in results.items() if v != "skipped"} == {"evaluate"}
    assert json.loads((run / "eval/test/metrics.json").read_text())["total"] == 3
    assert main(["stages", str(run)]) == 0
    assert capsys.readouterr().out.count("current") == len(results)
    assert main(["report", str(run)]) == 0
    assert main(["show_weights", str(run), "--n", "1"]) == 0
    heldout_judge = str(load_config(overrides=overrides).student.model)
    assert (
        main(["faithfulness", str(run), "--judge", heldout_judge, "--draws", "1", "--out", str(tmp_path / "f.json")])
        == 0
    )


def test_stale_advice_is_a_complete_command_with_the_runs_own_config(finished_tiny_run, tmp_path, capsys):
    from kpod.cli import main

    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run[0], run)
    (run / "rationales/train.jsonl").write_text((run / "rationales/train.jsonl").read_text().replace(" ", "  ", 1))
    assert main(["show_weights", str(run)]) == 2
    err = capsys.readouterr().err
    command = re.search(r"`(kpod full_pipeline --config \S+)`", err)
    assert command, err
    snapshot = Path(command.group(1).split("--config ")[1])
    assert snapshot.is_file() and load_config(snapshot).teacher.kind == "reference"  # the run's own teacher
    assert main(["stages", str(run)]) == 0
    assert "train_token_weighting    reruns: rationales/train.jsonl changed since it ran" in capsys.readouterr().out


def test_reuse_from_lends_the_stages_whose_records_hold(finished_tiny_run, tmp_path, caplog):
    """Same rationales and weights, another schedule: generate, weighting and difficulties are borrowed,
    cluster (which reads schedule.kind) and everything after it run here."""
    import logging

    source, overrides = finished_tiny_run
    caplog.set_level(logging.INFO, logger="kpod")
    cfg = load_config(overrides=overrides + [f"output_dir={tmp_path / 'linear'}", "schedule.kind=linear"])
    results = pipeline.full_pipeline(cfg, reuse_from=source)
    assert [s for s, r in results.items() if r == "skipped"] == [
        "generate",
        "train_token_weighting",
        "calculate_difficulties",
    ]
    assert "borrowed from" in caplog.text and "stage cluster is not borrowed" in caplog.text
    assert (tmp_path / "linear/weights/weights.jsonl").read_bytes() == (source / "weights/weights.jsonl").read_bytes()
    assert json.loads((tmp_path / "linear/schedule/schedule.json").read_text()) != json.loads(
        (source / "schedule/schedule.json").read_text()
    )
    # another seed draws other training questions (data.max_train_questions): nothing holds, nothing is lent
    other = load_config(overrides=overrides + [f"output_dir={tmp_path / 'seed'}", "seed=7"])
    assert pipeline.lend_stages(other, source) == [] and not (tmp_path / "seed/rationales").exists()
