"""`drpo --help` and every subcommand's: each option with a default says it."""

from __future__ import annotations

import argparse

import pytest

from drpo.cli import COMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_shows_the_defaults(command):
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if not action.option_strings or not action.help or action.default in (None, False, [], argparse.SUPPRESS):
            continue
        assert "default" in " ".join(sub._get_formatter()._expand_help(action).split()), (command, action.option_strings)
    assert text.startswith("usage: drpo " + command)
