"""Every `mmcardio` command's --help renders, teaches its usage and offers --json."""
import contextlib
import io

import pytest

from mmcardio.cli import COMMANDS, main


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


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_renders_usage_json_and_plain_percent_signs(name):
    text = _help([name, "--help"])
    assert text.startswith(f"usage: mmcardio {name}")
    assert "--json" in text
    # argparse %-formats help= strings but prints descriptions verbatim: "%%" there is a typo
    assert "%%" not in text
