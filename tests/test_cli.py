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
    parsers = [sub]
    for p in parsers:  # and its sub-subcommands (drpo world ship, drpo prompts prepare, ...)
        parsers += [c for a in p._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices.values()]
    for p in parsers:
        for action in p._actions:
            if not action.option_strings or not action.help or action.default in (None, False, [], argparse.SUPPRESS):
                continue
            assert "default" in " ".join(p._get_formatter()._expand_help(action).split()), (p.prog, action.option_strings)
    assert text.startswith("usage: drpo " + command)
