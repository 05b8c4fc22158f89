"""The `mmcardio` command. Thin: each subcommand lives in `mmcardio/commands/<name>.py`,
exposes `register(subparsers)` and calls the library API."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mmcardio.errors import MMCardioError

#: Subcommand modules in `mmcardio.commands`, in the order `--help` lists them.
COMMANDS = ("synth", "manifest", "validate", "read", "prepare", "pretrain", "embed", "index", "retrieve",
            "zeroshot", "bench", "measure", "segment", "label_reports", "report", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmcardio",
        description="Cardiology multimodal foundation models: read ECG/echo/CMR/CT studies, "
                    "pretrain CardioCLIP, retrieve studies from report text, evaluate zero-shot.",
        epilog="Run `mmcardio COMMAND --help` for each command. Every command takes --json.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mmcardio.commands.{name}").register(sub)
    return parser


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout (for scripts)")


def add_run_flags(parser: argparse.ArgumentParser, set_example: str) -> None:
    """--resume, --set and --json, as every training command takes them."""
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the latest checkpoint in OUT/checkpoints, or from CHECKPOINT")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key (dotted, YAML value), e.g. {set_example}")
    add_json_flag(parser)


def emit(result: Any, as_json: bool, text: str | None = None) -> None:
    """Print `result` as JSON (for scripts) or `text` (for people)."""
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    elif text is not None:
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:  # a program calling main() configures its own logging
        # stderr: our progress notes (resuming, skipped studies) and the libraries' warnings
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("mmcardio").setLevel(logging.INFO)
    try:
        code = args.func(args)
    except MMCardioError as err:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(err), "file": err.path, "field": err.field}))
        print(f"mmcardio {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmcardio {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
