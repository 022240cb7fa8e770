"""`kpod config show | validate | init`."""

import yaml

from kpod.cli import main
from kpod.config import KPODConfig, leaf_fields, load_config


def test_show_prints_every_setting_with_its_description_and_reads_back(tmp_path, capsys):
    assert main(["config", "show", "--set", "dataset=svamp", "--set", "train.epochs=3"]) == 0
    text = capsys.readouterr().out
    assert "dataset: svamp  # (changed)" in text and "  epochs: 3  # (changed)" in text
    assert "  # Training epochs (also the number of curriculum phases when schedule.phases is not set" in text
    (tmp_path / "shown.yaml").write_text(text)
    cfg = load_config(tmp_path / "shown.yaml")
    assert cfg.snapshot() == load_config(overrides=["dataset=svamp", "train.epochs=3"]).snapshot()
    shown = yaml.safe_load(text)
    for dotted in leaf_fields(KPODConfig):
        node = shown
        for part in dotted.split("."):
            node = node[part]  # every setting is there


def test_validate_names_every_problem(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: 0\n  batch_size: many\nschedule:\n  kind: spiral\n")
    assert main(["config", "validate", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "train.epochs:" in err and "train.batch_size:" in err
    (tmp_path / "unknown.yaml").write_text("schedule:\n  kind: spiral\n")
    assert main(["config", "validate", str(tmp_path / "unknown.yaml")]) == 2
    assert "schedule.kind: unknown 'spiral'" in capsys.readouterr().err
    (tmp_path / "ok.yaml").write_text("dataset: svamp\ntrain:\n  epochs: 4\n")
    assert main(["config", "validate", str(tmp_path / "ok.yaml")]) == 0
    assert "valid; 2 setting(s) away from the defaults" in capsys.readouterr().out


def test_init_writes_a_commented_config_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "run.yaml"
    assert main(["config", "init", "--dataset", "csqa", "--model", "smollm2", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# kpod configuration for commonsenseqa with student smollm2")
    cfg = load_config(out)
    assert cfg.dataset == "commonsenseqa" and cfg.student.model == "smollm2"
    out.write_text("dataset: gsm8k\n")
    assert main(["config", "init", "--dataset", "svamp", "--model", "smollm2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "dataset: gsm8k\n"
