import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KPOD_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
os.environ["KPOD_DATA_DIR"] = str(DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
