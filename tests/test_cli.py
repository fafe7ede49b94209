"""`lsc4rec --help` and every subcommand's help: each option explained."""
import argparse

import pytest

from simulator.cli import build_parser, main


def _walk(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


COMMANDS = list(_walk(build_parser()))


@pytest.mark.parametrize("path, parser", COMMANDS, ids=[" ".join(p) or "lsc4rec" for p, _ in COMMANDS])
def test_every_option_has_help(path, parser):
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"lsc4rec {' '.join(path)} {action.option_strings[0]} has no help text"


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "data" in capsys.readouterr().out


def test_typed_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "stats", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lsc4rec: error:") and "missing" in err[0]
