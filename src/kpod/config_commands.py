"""`kpod config show | validate | init`: the configuration, discoverable from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from kpod.config import ConfigError, changed_settings, commented_yaml, load_config


def add_parser(sub) -> None:
    config = sub.add_parser("config", help="show, validate or start a configuration")
    actions = config.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the resolved configuration as YAML, each field with its description")
    show.add_argument("--config", help="YAML config file")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    validate = actions.add_parser("validate", help="check a config file: exit 0, or name every problem")
    validate.add_argument("file")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    init = actions.add_parser("init", help="write a commented starting config for a new run")
    init.add_argument("--dataset", required=True, help="gsm8k, asdiv, svamp or commonsenseqa")
    init.add_argument("--model", required=True, help="student: hub id, local folder or 'smollm2'")
    init.add_argument("--out", default="kpod.yaml", help="file to write (default kpod.yaml; never overwritten)")


def run(args: argparse.Namespace) -> None:
    if args.action == "show":
        print(commented_yaml(load_config(args.config, args.overrides)), end="")
    elif args.action == "validate":
        print(validate(args.file, args.overrides))
    else:
        print(init(args.dataset, args.model, Path(args.out)))


def validate(file: str, overrides: list[str] | None = None) -> str:
    from kpod.pipeline import check_choices

    cfg = load_config(file, overrides)
    check_choices(cfg)
    changed = changed_settings(cfg)
    listed = "".join(f"\n  {k}: {v!r}" for k, v in changed.items())
    return f"{file}: valid; {len(changed)} setting(s) away from the defaults:{listed}"


def init(dataset: str, model: str, out: Path) -> str:
    if out.exists():
        raise ConfigError(f"{out}: already exists; choose another --out (nothing was written)")
    cfg = load_config(overrides={"dataset": dataset, "student.model": model})
    header = (
        f"kpod configuration for {cfg.dataset} with student {model}. Every setting is listed under its description,\n"
        "at its default unless marked (changed); delete the lines you keep at their default if you like.\n"
        f"Run: kpod full_pipeline --config {out}     Check: kpod config validate {out}\n"
        "Defaults are the paper's (Flan-T5-Large student, gpt-3.5-turbo teacher: set teacher.kind and its key)."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(commented_yaml(cfg, header))
    load_config(out)  # what we wrote reads back
    return f"wrote {out}"
