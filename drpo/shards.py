"""`I/N` shards (`drpo sample --shard`, `drpo judge --shard`): shard I of N takes every N-th item
starting at I."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse_shard(shard: str | Sequence[int] | None) -> tuple[int, int] | None:
    """'1/4' or (1, 4) -> (1, 4); None -> None; ValueError naming the value otherwise."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in (shard.split("/") if isinstance(shard, str) else shard))
    except ValueError:
        raise ValueError(f"shard {shard!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= I < N")
    return i, n


def shard_arg(text: str) -> tuple[int, int]:
    """argparse `type=` for `--shard I/N`."""
    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--{err}") from None
