import pytest

from kpod.config import ConfigError, KPODConfig, load_config


def test_defaults_are_the_paper_settings():
    c = KPODConfig()
    assert c.student.model == "google/flan-t5-large"
    assert (c.student.lora_r, c.student.lora_alpha, c.train.batch_size, c.train.epochs) == (128, 16, 4, 100)
    assert (c.train.learning_rate, c.weighting.alpha, c.schedule.p, c.schedule.c0_ratio) == (5e-5, 0.5, 0.5, 0.3)
    assert (c.schedule.beta, c.cluster.k, c.teacher.model) == (12.0, 5, "gpt-3.5-turbo")


def test_weighting_estimator_settings_are_checked_at_load():
    with pytest.raises(ConfigError, match="no gradient path"):
        load_config(overrides=["weighting.estimator=straight_through"])  # with the default masking=delete
    with pytest.raises(ConfigError, match="samples >= 2"):
        load_config(overrides=["weighting.samples=1"])
    c = load_config(overrides=["weighting.estimator=straight_through", "weighting.masking=embedding"])
    assert c.weighting.estimator == "straight_through"


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dataset: svamp\ntrain:\n  epochs: 7\nlora_r: 8\nbeta: 0\n")
    c = load_config(f, ["train.learning_rate=1e-3", "student_model_name=smollm2", "report_to=tensorboard"])
    assert (c.dataset, c.train.epochs, c.student.lora_r, c.schedule.beta) == ("svamp", 7, 8, 0.0)
    assert (c.train.learning_rate, c.student.model, c.report_to) == (1e-3, "smollm2", "tensorboard")
    assert str(c.run_dir) == "outputs/svamp/smollm2"


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.epochz=3", "train.epochz"),
        ("train.epochs=abc", "train.epochs"),
        ("schedule.c0_ratio=1.5", "schedule.c0_ratio"),
        ("weighting.prefixes=foo", "weighting.prefixes"),
        ("method=distill", "method"),
        ("dataset=mnist", "dataset"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_presets_validate():
    from pathlib import Path

    presets = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(presets) >= 13
    for preset in presets:
        load_config(preset)
