import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KPOD_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
os.environ["KPOD_DATA_DIR"] = str(DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["KPOD_CHECK_DECLARED"] = "1"  # a stage that reads a setting it does not declare fails the test
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "gsm8k" / "train.jsonl").is_file():
        pytest.fail(f"test data not found at {DATA}: set KPOD_DATA_DIR")
    return DATA


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, data_dir) -> Path:
    from kpod.testing import build_tiny_model

    return build_tiny_model("t5", data_dir / "tokenizers" / "flan-t5", tmp_path_factory.mktemp("models") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, data_dir) -> Path:
    from kpod.testing import build_tiny_model

    return build_tiny_model(
        "llama", data_dir / "tokenizers" / "llama", tmp_path_factory.mktemp("models") / "tiny-llama"
    )


TINY_RUN_SETTINGS = [
    "dataset=gsm8k",
    "teacher.kind=reference",
    "data.max_train_questions=6",
    "data.max_eval_questions=2",
    "train.epochs=2",
    "weighting.epochs=1",
    "weighting.reasoner_lora=true",
    "eval.max_new_tokens=4",
    "train.eval_every=0",
    "student.lora_r=4",
    "student.max_target_tokens=256",
    "train.trainer_args.logging_steps=1",
]


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory, tiny_llama) -> tuple[Path, list[str]]:
    """A KPOD run of every stage with a tiny LLaMA on 6 GSM8K questions: (run folder, its overrides).
    Read it; copy it before writing into it."""
    from kpod import pipeline
    from kpod.config import load_config

    run = tmp_path_factory.mktemp("finished") / "run"
    overrides = TINY_RUN_SETTINGS + [f"student.model={tiny_llama}", f"output_dir={run}"]
    pipeline.full_pipeline(load_config(overrides=overrides))
    return run, overrides
