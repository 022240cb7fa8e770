"""Server evaluation (eval.backend=server) against local evaluation, on the same student and questions.

Exports a run's student (LoRA merged) with `kpod export`, evaluates it locally (generate(), batched),
then serves the exported folder with `transformers serve` on this machine's CPU and evaluates it
again through the completions API. Prints how many predictions and cleaned outputs agree and the
wall time of each backend (server: requests only, the server already loaded), and writes them as JSON.

    pip install -e ".[serve]"
    KPOD_DATA_DIR=../shared/data python bench/server_eval_agreement.py --run studies/out/svamp_study/kpod-s0 --questions 40

Without --run: the pretrained SmolLM2-135M-Instruct on SVAMP.
"""

import argparse
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from kpod import pipeline
from kpod.artifacts import RunPaths
from kpod.config import load_config
from kpod.export import export_student
from kpod.models import smollm2_folder


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 600.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"transformers serve did not answer {url}/health within {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished kpod run folder; default: the pretrained SmolLM2")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16, help="local backend's generation batch")
    parser.add_argument("--concurrency", type=int, default=4, help="server backend's requests in flight")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--work", type=Path, default=Path("bench/out/server_eval"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/server_eval_agreement.json"))
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    if args.run:
        student = args.work / "student"
        export_student(args.run, student, merge=True)
        cfg_file = RunPaths(args.run).config_snapshot("train")
    else:
        student, cfg_file = smollm2_folder(), None
    settings = {
        "output_dir": str(args.work / "run"),
        "student.model": str(student),
        "data.max_eval_questions": args.questions,
        "eval.max_new_tokens": args.max_new_tokens,
        "eval.batch_size": args.batch_size,
    }
    if cfg_file is None:
        settings["dataset"] = "svamp"
    cfg = load_config(cfg_file, settings)

    start = time.perf_counter()
    local = pipeline.evaluate(cfg, model_path=str(student))
    local_s = time.perf_counter() - start

    url = f"http://127.0.0.1:{args.port}"
    dtype = cfg.student.dtype if cfg.student.dtype != "auto" else "float32"
    command = ["transformers", "serve", str(student), "--host", "127.0.0.1", "--port", str(args.port)]
    command += ["--device", "cpu", "--dtype", dtype]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(args.work / "server.log", "w"))
    try:
        wait_until_up(url, server)
        served = load_config(
            cfg_file,
            settings
            | {
                "eval.backend": "server",
                "eval.server_url": f"{url}/v1",
                "eval.server_model": str(student),
                "eval.server_concurrency": args.concurrency,
            },
        )
        start = time.perf_counter()
        remote = pipeline.evaluate(served, model_path=str(student), tag="server")
        server_s = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)

    split = cfg.eval.split
    read = lambda name: [json.loads(x) for x in (args.work / "run/eval" / name / "predictions.jsonl").open()]  # noqa: E731
    pairs = list(zip(read(split), read(f"{split}-server"), strict=True))
    result = {
        "student": str(args.run or "smollm2"),
        "dataset": cfg.dataset,
        "split": split,
        "questions": len(pairs),
        "max_new_tokens": args.max_new_tokens,
        "local_batch_size": args.batch_size,
        "server_concurrency": args.concurrency,
        "same_prediction": sum(a["prediction"] == b["prediction"] for a, b in pairs),
        "same_cleaned_output": sum(a["output"] == b["output"] for a, b in pairs),
        "local_accuracy": local["accuracy"],
        "server_accuracy": remote["accuracy"],
        "local_seconds": round(local_s, 1),
        "server_seconds": round(server_s, 1),
        "server_over_local_time": round(server_s / local_s, 2),
    }
    print(json.dumps(result, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
