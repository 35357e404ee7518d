"""The `drpo` command. The command `drpo X` lives in `drpo/commands/X.py`, imported only when used.

A command module defines `add_arguments(parser)` and `main(args) -> int | None` (see drpo.commands).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from drpo import __version__
from drpo.errors import UserError

# name -> (module, one-line help). Modules are imported lazily so `drpo --help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "toy": ("drpo.commands.toy", "2-D demonstration of the drift field (writes a figure, < 30 s on a laptop)"),
    "train": ("drpo.commands.train", "train DrPO, its offline variant or a baseline from a config (resumable)"),
    "job": ("drpo.commands.job", "run one workflow job as an MLflow child run, on its own GPUs (used by the Snakefile)"),
    "bench": ("drpo.commands.bench", "benchmarks: DrPO vs DRaFT seconds per update, the drift field's cost"),
    "collect": ("drpo.commands.collect", "gather the workflow's score and judge summaries into one results file"),
    "report": ("drpo.commands.report", "one self-contained HTML page: tables, figures, sample grids"),
    "sample": ("drpo.commands.sample", "sample a test set with any generator; images + manifest.jsonl (resumable)"),
    "score": ("drpo.commands.score", "a metric on a sampled test set: any reward, FID, diversity, GenEval (resumable)"),
    "tables": ("drpo.commands.tables", "the paper's tables and figures from a results file, paper values beside ours"),
    "prompts": ("drpo.commands.prompts", "prepare public prompt sets (sha256-checked), Pick-a-Pic pairs, train/test disjointness"),
    "world": ("drpo.commands.world", "the synthetic shapes world: GenEval-format prompts, rendered pictures"),
    "fetch": ("drpo.commands.fetch", "list every model, weight file and dataset a config needs (sizes, present/missing) and download the missing ones"),
    "judge": ("drpo.commands.judge", "pairwise preference of two sample sets by a Qwen3-VL / OpenAI-compatible / world judge (resumable)"),
    "preload": ("drpo.commands.preload", "a warm interpreter for the workflow's jobs on one machine (DRPO_PRELOAD=1 snakemake ...)"),
    "twins": ("drpo.commands.twins", "tiny random-weight twins of every model a config names (the test studies, config/test/*.yaml)"),
}


log = logging.getLogger("drpo.cli")  # not __name__: `python -m drpo.cli` runs this module as __main__
HANDLER_NAME = "drpo-stderr"


class _StderrHandler(logging.StreamHandler):
    """Writes to the `sys.stderr` of the moment, not the one at configure time: a command served by
    the preload server (`drpo.preload`) runs in a child of the process that configured logging, and
    pytest's capsys replaces sys.stderr per test."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler's would assign `stream`, a property here

    @property
    def stream(self):
        return sys.stderr


class _Formatter(logging.Formatter):
    """`drpo: message` for INFO; `drpo: warning: message`, `drpo: error: message` and
    `drpo: debug: logger: message` for the other levels. A record logged with
    `extra={"command": name}` reads `drpo name: ...` (`drpo train: error: ...`)."""

    LABELS = {logging.DEBUG: "debug: ", logging.INFO: "", logging.WARNING: "warning: ", logging.ERROR: "error: ",
              logging.CRITICAL: "error: "}

    def formatMessage(self, record: logging.LogRecord) -> str:
        command = getattr(record, "command", None)
        label = self.LABELS.get(record.levelno, f"{record.levelname.lower()}: ")
        if record.levelno < logging.INFO:
            label += f"{record.name}: "
        return f"drpo{' ' + command if command else ''}: {label}{record.message}"


def configure_logging(debug: bool = False) -> None:
    """The `drpo` logger's one handler, to stderr (INFO and up; DEBUG with --debug or DRPO_DEBUG=1).
    Idempotent: a command the preload server forks enters `main` again in a process that already has it.
    Records still propagate to the root logger (pytest's caplog); library code never configures logging."""
    logger = logging.getLogger("drpo")
    # by name, not class: a server started as `python -m drpo.cli` defined its class in __main__
    if not any(h.get_name() == HANDLER_NAME for h in logger.handlers):
        handler = _StderrHandler()
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def _debug_requested(argv: list[str]) -> bool:
    end = argv.index("--") if "--" in argv else len(argv)
    return "--debug" in argv[:end] or os.environ.get("DRPO_DEBUG", "0") not in ("", "0")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help (unless its help already says it, or there is none);
    epilogs (config keys, fetch examples) keep their layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or default == [] or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drpo",
        description="Drifting Preference Optimization for one-step text-to-image generators.",
    )
    parser.add_argument("--version", action="version", version=f"drpo {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error and debug messages (also: DRPO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
            _inherit_formatter(p)
    return parser


def _inherit_formatter(parser: argparse.ArgumentParser) -> None:
    """Sub-subcommands (`drpo world ship`) show their defaults too: argparse gives them its own formatter."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.formatter_class = parser.formatter_class
                _inherit_formatter(child)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    configure_logging(debug)
    if argv[:1] != ["preload"] and os.environ.get("DRPO_PRELOAD_SOCKET"):
        from drpo import preload  # a warm server of this workflow run is announced: use it

        code = None if preload.IN_CHILD else preload.try_run(argv)
        if code is not None:
            return code
    # --debug may stand anywhere before a `--` (drpo train ... --debug), not only before the command
    end = argv.index("--") if "--" in argv else len(argv)
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as err:
        # User errors (bad config, missing or corrupt file, a failing reward) get one clear line;
        # the message names the file, key or value and the fix. --debug shows the traceback.
        if debug:
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        log.error("%s", message, extra={"command": args.command})
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
