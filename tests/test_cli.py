"""Every `mmcardio` command's --help renders, teaches its usage and offers --json."""
import argparse
import contextlib
import io
import subprocess
import sys

import pytest

from mmcardio.cli import COMMANDS, build_parser, main


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return out.getvalue()


def test_top_level_help_lists_every_command():
    text = _help(["--help"])
    for name in COMMANDS:
        assert name in text


def leaf_commands() -> list[list[str]]:
    """Every runnable command line: `mmcardio NAME`, or `mmcardio NAME ACTION` for a command
    with actions (e.g. `segment train`)."""
    def actions(parser: argparse.ArgumentParser) -> dict:
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})

    top = actions(build_parser())
    return [[name, *([action] if action else [])]
            for name in COMMANDS for action in (list(actions(top[name])) or [None])]


@pytest.mark.parametrize("argv", leaf_commands(), ids=" ".join)
def test_command_help_renders_usage_json_and_plain_percent_signs(argv):
    text = _help([*argv, "--help"])
    assert text.startswith(f"usage: mmcardio {' '.join(argv)}")
    assert "--json" in text
    # argparse %-formats help= strings but prints descriptions verbatim: "%%" there is a typo
    assert "%%" not in text


def test_parser_loads_neither_torch_nor_faiss():
    # `mmcardio --help` and the parse of every command stay quick: the heavy libraries load
    # when a command runs. A fresh interpreter, since this test session has imported torch.
    code = ("import sys; from mmcardio.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
