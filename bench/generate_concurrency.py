"""Teacher throughput: concurrency 1 versus 32 against a fake OpenAI-compatible server on 127.0.0.1
that answers every request after 200 ms. Prints the throughput ratio (goal: >= 20x).

    KPOD_DATA_DIR=../shared/data python bench/generate_concurrency.py [--questions 64]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402

from kpod.artifacts import RunPaths  # noqa: E402
from kpod.config import load_config  # noqa: E402
from kpod.data import load_dataset_splits  # noqa: E402
from kpod.teacher.openai_teacher import run_openai_teacher  # noqa: E402


def timed(url: str, questions, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            overrides={
                "output_dir": tmp,
                "teacher.base_url": url,
                "teacher.model": "fake",
                "teacher.concurrency": concurrency,
            }
        )
        start = time.perf_counter()
        records, summary = run_openai_teacher(cfg, questions, RunPaths(tmp), progress=False)
        seconds = time.perf_counter() - start
        assert len(records) == len(questions) and summary["requests_sent"] == len(questions)
        return seconds


def main() -> None:
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "bench-key")
    questions = load_dataset_splits("gsm8k").train[: args.questions]
    with FakeOpenAI(latency=args.latency) as server:
        serial = timed(server.url, questions, 1)
        parallel = timed(server.url, questions, 32)
    n = len(questions)
    print(f"{n} requests, {args.latency * 1000:.0f} ms server latency")
    print(f"concurrency  1: {serial:6.2f} s  ({n / serial:6.1f} req/s)")
    print(f"concurrency 32: {parallel:6.2f} s  ({n / parallel:6.1f} req/s)")
    print(f"throughput ratio: {serial / parallel:.1f}x")


if __name__ == "__main__":
    main()
