"""`drpo --help` and every subcommand's: each option with a default says it."""

from __future__ import annotations

import argparse
import logging

import pytest

from drpo.cli import COMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_shows_the_defaults(command):
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = " ".join(sub.format_help().split())
    parsers = [sub]
    for p in parsers:  # and its sub-subcommands (drpo world ship, drpo prompts prepare, ...)
        parsers += [c for a in p._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices.values()]
    for p in parsers:
        for action in p._actions:
            if not action.option_strings or not action.help or action.default in (None, False, [], argparse.SUPPRESS):
                continue
            assert "default" in " ".join(p._get_formatter()._expand_help(action).split()), (p.prog, action.option_strings)
    assert text.startswith("usage: drpo " + command)


def test_status_goes_to_stderr_with_the_drpo_prefix_results_to_stdout(tmp_path, capsys):
    """Diagnostics are logged (`drpo: ...` on stderr); stdout holds only what a command was asked for."""
    from drpo.cli import main

    out = tmp_path / "p.jsonl"
    assert main(["world", "prompts", "--n", "4", "--seed", "0", "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == "" and out.exists()
    assert stderr.startswith("drpo: wrote 4 prompts (") and stderr.rstrip().endswith(f"to {out}")
    assert stderr.count("drpo: wrote") == 1  # one handler, however often main is entered
    assert main(["world", "prompts", "--n", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("drpo: wrote") == 1
    # a user error: one `drpo COMMAND: error:` line; a warning: `drpo: warning:`
    assert main(["world", "prompts", "--out", str(out)]) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == "" and stderr.startswith("drpo world: error: drpo world prompts: give --n N")
    logging.getLogger("drpo.test").warning("careful")
    assert capsys.readouterr().err == "drpo: warning: careful\n"
