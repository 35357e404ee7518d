"""`drpo preload serve --socket PATH`: the warm interpreter of drpo.preload (the Snakefile's onstart
runs it with DRPO_PRELOAD=1); the server itself lives in drpo.preload."""

from __future__ import annotations

import argparse

from drpo.preload import MODULES, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("serve", help="import the heavy modules once and run drpo commands in warm children")
    p.add_argument("--socket", required=True, help="Unix socket path to listen on (jobs find it in $DRPO_PRELOAD_SOCKET)")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without work (default: never)")
    p.add_argument("--modules", default=",".join(MODULES), help="comma-separated modules to import before serving (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    serve(args.socket, modules=tuple(m for m in args.modules.split(",") if m), idle_timeout=args.idle_timeout)
    return 0
