import pytest

from kpod.config import ConfigError, KPODConfig, load_config


def test_defaults_are_the_paper_settings():
    c = KPODConfig()
    assert c.student.model == "google/flan-t5-large"
    assert (c.student.lora_r, c.student.lora_alpha, c.train.batch_size, c.train.epochs) == (128, 16, 4, 100)
    assert (c.train.learning_rate, c.weighting.alpha, c.schedule.p, c.schedule.c0_ratio) == (5e-5, 0.5, 0.5, 0.3)
    assert (c.schedule.beta, c.cluster.k, c.teacher.model) == (12.0, 5, "gpt-3.5-turbo")


def test_estimator_and_schedule_names_are_checked_against_their_tables_before_anything_runs(tmp_path):
    from kpod.pipeline import check_choices, full_pipeline

    def check(*overrides):
        check_choices(load_config(overrides=[*overrides, f"output_dir={tmp_path / 'run'}"]))

    with pytest.raises(ConfigError, match="no gradient path"):
        check("weighting.estimator=straight_through")  # with the default masking=delete
    with pytest.raises(ConfigError, match="samples >= 2"):
        check("weighting.samples=1")
    with pytest.raises(ConfigError, match="known: score_function, straight_through"):
        check("weighting.estimator=reinforce")
    with pytest.raises(ConfigError, match="schedule.kind: unknown 'cosine'; known: kpod, linear, none"):
        check("schedule.kind=cosine")
    check("weighting.estimator=straight_through", "weighting.masking=embedding", "schedule.kind=linear")
    with pytest.raises(ConfigError, match="schedule.kind"):
        full_pipeline(load_config(overrides=["schedule.kind=cosine", f"output_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


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
        ("data.max_train_questions=yes", "data.max_train_questions"),  # a boolean is not a number
        ("train.epochs=true", "train.epochs"),
        ("schedule.beta=false", "schedule.beta"),
        ("train.trainer_args.save_total_limit=two", "train.trainer_args"),
        ("train.trainer_args.bf16=1", "train.trainer_args"),
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


def test_a_key_given_twice_in_a_yaml_file_is_refused_naming_the_lines(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "dataset: gsm8k\ndata:\n  max_train_questions: 8\ntrain:\n  epochs: 2\ndata:\n  split_source: official\n"
    )
    with pytest.raises(ConfigError, match=r"c\.yaml:6: 'data' is given twice \(first on line 2\)"):
        load_config(f)
    f.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="c.yaml:3: 'epochs' is given twice"):
        load_config(f)


def test_numbers_and_trainer_args_that_are_right_still_load():
    c = load_config(
        overrides=[
            "train.learning_rate=1",  # an int is a float
            "data.max_train_questions=8",
            "train.trainer_args.save_total_limit=3",
            "train.trainer_args.bf16=true",
            "train.trainer_args.warmup_steps=10",
            "train.trainer_args.lr_scheduler_type=cosine",
            "train.uniform_weights=true",
        ]
    )
    assert c.train.learning_rate == 1.0 and c.data.max_train_questions == 8 and c.train.uniform_weights is True


def test_the_curriculum_phases_are_also_read_under_their_earlier_name(tmp_path):
    """schedule.phases was schedule.stages: a YAML or --set with the old key still means the same."""
    old = tmp_path / "old.yaml"
    old.write_text("schedule:\n  stages: 8\n")
    assert load_config(old).schedule.phases == 8
    assert load_config(overrides=["schedule.stages=6"]).schedule.phases == 6
    assert load_config(overrides=["schedule.phases=4"]).curriculum_phases() == 4
    assert "stages" not in load_config(old).snapshot()["schedule"]
