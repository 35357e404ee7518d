"""`drpo --help` and every subcommand's: each option with a default says it."""

from __future__ import annotations

import argparse
import ast
import logging
import subprocess
import sys
from pathlib import Path

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


PACKAGE = Path(__file__).resolve().parents[1] / "drpo"


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_the_command_drpo_x_lives_in_drpo_commands_x():
    """One rule: `drpo X` is drpo/commands/X.py (arguments in, a call into the package), and no other
    module has a command line of its own."""
    assert {name: module for name, (module, _) in COMMANDS.items()} == {name: f"drpo.commands.{name}" for name in COMMANDS}
    files = {p.stem for p in (PACKAGE / "commands").glob("*.py") if p.name != "__init__.py"}
    assert files == set(COMMANDS)
    for name in files:
        assert {"add_arguments", "main"} <= _functions(PACKAGE / "commands" / f"{name}.py"), name
    elsewhere = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if p.parent != PACKAGE / "commands" and p != PACKAGE / "cli.py" and "add_arguments" in _functions(p))
    assert elsewhere == []


def test_drpo_help_imports_no_command_and_not_torch():
    code = ("import sys\n"
            "from drpo.cli import main\n"
            "assert main([]) == 0\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'pandas')"
            " or m.startswith('drpo.commands.'))\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: drpo" in proc.stdout
