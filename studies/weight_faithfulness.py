"""Faithfulness of the token weights on real rationales, several seeds (issue: keypoint weights).

SVAMP training questions with the real GPT-3.5-Turbo rationales of MCC-KD (the first correct one of
each question), SmolLM2-135M-Instruct as student, reasoner and judge. The weighting module trains on
`--train` questions and holds out `--heldout` (the same ones for every seed); `kpod faithfulness`
then deletes 20 % of each held-out rationale's tokens (top / bottom by w, random, digits first).
Resumable: a seed whose faithfulness.json exists is only printed.

    KPOD_DATA_DIR=../shared/data python studies/weight_faithfulness.py --seeds 0,1,2 [--set weighting.epochs=2 ...]
"""

import argparse
import json
import time
from pathlib import Path

from svamp_smollm2 import first_correct_rationales  # studies/ is on sys.path when run as a script

from kpod import pipeline
from kpod.artifacts import RunPaths
from kpod.config import load_config
from kpod.data.datasets import required_data_dir
from kpod.weighting.faithfulness import format_faithfulness, measure_faithfulness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="studies/out/weight_faithfulness")
    parser.add_argument("--name", default="default", help="sub-folder for this setting")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--fractions", default="", help="also delete these shares (e.g. 0.05,0.1): weights/faithfulness-<q>.json"
    )
    args = parser.parse_args()
    root = required_data_dir()
    teacher_file = Path(args.out) / f"gpt35_first_correct_{args.train + args.heldout}.jsonl"
    if not teacher_file.is_file():
        print(
            f"{first_correct_rationales(root, teacher_file, args.train + args.heldout)} questions with a correct rationale"
        )
    common = [
        "dataset=svamp",
        "student.model=smollm2",
        "teacher.kind=file",
        f"teacher.import_path={teacher_file}",
        f"weighting.holdout={args.heldout}",
        "weighting.max_rationale_tokens=192",
        "weighting.max_question_tokens=96",
    ]
    cache_file = Path(args.out) / "judge_cache.json"
    cache = {tuple(k): v for k, v in json.loads(cache_file.read_text())} if cache_file.is_file() else {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = load_config(
            overrides=common
            + args.overrides
            + [f"seed={seed}", f"output_dir={Path(args.out) / args.name / f'seed{seed}'}"]
        )
        paths = RunPaths(cfg.run_dir)
        if not paths.faithfulness.is_file():
            if not paths.rationales("train").is_file():
                pipeline.generate(cfg)
            start = time.time()
            summary = pipeline.train_token_weighting(cfg)
            weighting_seconds = time.time() - start
            start = time.time()
            measure_faithfulness(cfg.run_dir, progress=False, judge_cache=cache)
            cache_file.write_text(json.dumps([[list(k), v] for k, v in cache.items()]))
            (cfg.run_dir / "bench_seconds.json").write_text(
                json.dumps(
                    {
                        "weighting": weighting_seconds,
                        "faithfulness": time.time() - start,
                        "trained_on": summary["trained_on"],
                    }
                )
            )
        result = json.loads(paths.faithfulness.read_text())
        seconds = json.loads((cfg.run_dir / "bench_seconds.json").read_text())
        print(
            f"\n## {args.name}, seed {seed} (weighting {seconds['weighting']:.0f} s on {seconds['trained_on']} rationales, "
            f"deletion test {seconds['faithfulness']:.0f} s)\n{format_faithfulness(result)}",
            flush=True,
        )
        for fraction in [float(f) for f in args.fractions.split(",") if f]:
            out = paths.faithfulness.with_name(f"faithfulness-{fraction:g}.json")
            if not out.is_file():
                measure_faithfulness(cfg.run_dir, fraction=fraction, progress=False, judge_cache=cache, out=out)
                cache_file.write_text(json.dumps([[list(k), v] for k, v in cache.items()]))
            print(
                f"\n### {args.name}, seed {seed}, {100 * fraction:g} % deleted\n{format_faithfulness(json.loads(out.read_text()))}"
            )


if __name__ == "__main__":
    main()
