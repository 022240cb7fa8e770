"""`kpod <stage>` and the original KPOD interface `python main.py --mode <stage> ...`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from kpod import config_commands
from kpod.config import ConfigError, load_config
from kpod.endpoint import EndpointError
from kpod.files import DataError
from kpod.stages import STAGES

STAGE_NAMES = (*(s.name for s in STAGES), "full_pipeline")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--dataset", help="gsm8k, asdiv, svamp or commonsenseqa")
    parser.add_argument("--model", help="student: hub id, local folder or 'smollm2'")
    parser.add_argument(
        "--model_path",
        "--model-path",
        dest="model_path",
        help="trained student (a `kpod train` output folder) or model to start from",
    )
    parser.add_argument("--split", help="split for generate/evaluate (train, dev, test)")
    parser.add_argument(
        "--output-dir", "--output_dir", dest="output_dir", help="run folder (default outputs/<dataset>/<model>)"
    )
    parser.add_argument(
        "--data-dir", "--data_dir", dest="data_dir", help="dataset folder (default $KPOD_DATA_DIR, else the Hub)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpod", description="Keypoint-based progressive CoT distillation")
    sub = parser.add_subparsers(dest="stage", required=True)
    for name in STAGE_NAMES:
        _common(sub.add_parser(name, help=f"run the {name} stage"))
    sub.choices["full_pipeline"].add_argument(
        "--reuse-from",
        "--reuse_from",
        dest="reuse_from",
        metavar="RUN",
        help="borrow RUN's stages before train whose records hold for this config (same rationales, weights, ...)",
    )
    report = sub.add_parser("report", help="write report.html and report.md for a run folder")
    report.add_argument("run_dir")
    export = sub.add_parser(
        "export", help="the run's student as a standalone Hugging Face folder, or its token weights as a dataset"
    )
    export.add_argument("run_dir")
    export.add_argument("--out", help="model folder to write (weights, tokenizer, generation config, model card)")
    export.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the base weights")
    export.add_argument("--push-to-hub", dest="push_to_hub", metavar="REPO_ID", help="also upload the folder")
    export.add_argument("--weights", metavar="FILE", help="token weights as FILE.parquet or a datasets folder")
    comp = sub.add_parser("compare", help="accuracy of arms of runs with paired CIs and McNemar tests")
    comp.add_argument("runs", nargs="*", help="run folders (arms from their configs)")
    comp.add_argument("--split", default="test", help="split(s) to compare on; dev,test pools both")
    comp.add_argument("--group", action="append", default=[], metavar="NAME=RUN,RUN", help="an arm named by hand")
    comp.add_argument("--html", help="write an HTML page with the difference plot here")
    comp.add_argument("--json", help="write the full result as JSON here")
    faith = sub.add_parser("faithfulness", help="deletion test of a run's token weights on held-out rationales")
    faith.add_argument("run_dir")
    # defaults are measure_faithfulness's own, so that --quality can tell which options were given
    faith.add_argument("--fraction", type=float, help="share of each rationale's tokens deleted (default 0.2)")
    faith.add_argument("--draws", type=int, help="random deletions per rationale (default 3)")
    faith.add_argument("--judge", help="frozen model scoring the gold answer (default: the run's pretrained student)")
    faith.add_argument("--limit", type=int, help="at most this many held-out rationales")
    faith.add_argument("--seed", type=int, help="(default 0)")
    faith.add_argument("--out", help="write the result here instead of weights/faithfulness.json (the report's)")
    faith.add_argument(
        "--quality",
        action="store_true",
        help="instead, run the weighting stage's own check (5 %% and 10 %%, weights/quality.json) on a run whose "
        "stage ran with weighting.quality_check=false, with that stage's settings (takes none of the options above)",
    )
    config_commands.add_parser(sub)
    stages = sub.add_parser("stages", help="each stage of a run folder: current, or why it would rerun")
    stages.add_argument("run_dir")
    stages.add_argument("--config", help="check against this config (default: the run's newest config snapshot)")
    stages.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    view = sub.add_parser("show_weights", help="print rationales with tokens marked by weight")
    view.add_argument("run_dir")
    view.add_argument("--n", type=int, default=3)
    view.add_argument("--html", help="also write an HTML page here")
    return parser


def build_main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="KPOD (original interface)")
    parser.add_argument("--mode", required=True, choices=STAGE_NAMES)
    _common(parser)
    return parser


def config_from_args(args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.dataset:
        overrides.insert(0, f"dataset={args.dataset}")
    if args.model:
        overrides.insert(0, f"student.model={args.model}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.split and args.stage_name == "evaluate":
        overrides.append(f"eval.split={args.split}")
    return load_config(args.config, overrides)  # every stage checks its choices (pipeline.check_choices)


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    from kpod import pipeline

    args.stage_name = stage
    cfg = config_from_args(args)
    if stage == "generate":
        return pipeline.generate(cfg, args.split or "train")
    if stage == "train":
        return pipeline.train(cfg, args.model_path)
    if stage == "evaluate":
        return pipeline.evaluate(cfg, args.model_path)
    if stage == "full_pipeline":
        return pipeline.full_pipeline(cfg, args.model_path, reuse_from=getattr(args, "reuse_from", None))
    return pipeline.STAGE_FUNCTIONS[stage](cfg)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _run(func) -> int:
    """Run a command; errors reach the user as one line (KPOD_DEBUG=1 or --debug: the traceback)."""
    debug = os.environ.get("KPOD_DEBUG", "") not in ("", "0")
    try:
        result = func()
    except KeyboardInterrupt:
        print("kpod: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, DataError, FileNotFoundError, ValueError, EndpointError) as exc:
        if debug:
            raise
        print(f"kpod: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else still gets a message, not a traceback
        if debug:
            raise
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        print(
            f"kpod: error: {type(exc).__name__}{where}: {exc}\n"
            "kpod: rerun with --debug (or KPOD_DEBUG=1) for the traceback",
            file=sys.stderr,
        )
        return 1
    if isinstance(result, dict):
        print(json.dumps(result, indent=1, default=str))
    return 0


def _debug_flag(argv: list[str] | None) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["KPOD_DEBUG"] = "1"
    return argv


def _report(args: argparse.Namespace) -> dict:
    from kpod.report import write_report

    return {"report": str(write_report(args.run_dir))}


def _export(args: argparse.Namespace) -> dict:
    from kpod.export import export_student, export_weights

    if not (args.out or args.weights):
        raise ValueError("kpod export: give --out DIR (the student) and/or --weights FILE (the token weights)")
    result = {}
    if args.out:
        result["student"] = export_student(args.run_dir, args.out, merge=args.merge, push_to_hub=args.push_to_hub)
    if args.weights:
        result["weights"] = export_weights(args.run_dir, args.weights)
    return result


def _compare(args: argparse.Namespace) -> None:
    from kpod.evaluation.compare import compare

    compare(args.runs, args.split, groups=args.group, html_path=args.html, json_path=args.json)


def _faithfulness(args: argparse.Namespace) -> None:
    from kpod.weighting.faithfulness import format_faithfulness, measure_faithfulness

    _setup_logging(quiet=True)
    names = ("fraction", "draws", "judge", "limit", "seed", "out")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.quality:
        from kpod.weighting.faithfulness import format_quality
        from kpod.weighting.train import check_run_weights

        if options:
            given = ", ".join(f"--{name}" for name in options)
            raise ConfigError(f"--quality runs the stage's check with the stage's settings; drop {given}")
        print(format_quality(check_run_weights(args.run_dir)))
        return
    print(format_faithfulness(measure_faithfulness(args.run_dir, **options)))


def _show_weights(args: argparse.Namespace) -> None:
    from kpod.pages import show_weights

    show_weights(args.run_dir, args.n, args.html)


def _stages(args: argparse.Namespace) -> None:
    from kpod.stage_records import stage_status

    cfg = None
    if args.config or args.overrides:
        cfg = load_config(args.config, [*args.overrides, f"output_dir={args.run_dir}"])
    for name, reason in stage_status(args.run_dir, cfg):
        print(f"{name:<24} {'current' if reason is None else 'reruns: ' + reason}")


# the commands that are not pipeline stages; every other command runs the stage of its name
COMMANDS = {
    "report": _report,
    "export": _export,
    "compare": _compare,
    "faithfulness": _faithfulness,
    "show_weights": _show_weights,
    "stages": _stages,
    "config": config_commands.run,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_debug_flag(argv))
    if args.stage in COMMANDS:
        return _run(lambda: COMMANDS[args.stage](args))
    _setup_logging(args.quiet)
    return _run(lambda: run_stage(args.stage, args))


def main_original(argv: list[str] | None = None) -> int:
    args = build_main_parser().parse_args(_debug_flag(argv))
    _setup_logging(args.quiet)
    return _run(lambda: run_stage(args.mode, args))


if __name__ == "__main__":
    sys.exit(main())
