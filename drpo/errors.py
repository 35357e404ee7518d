"""The one error type the `drpo` command prints as a single line.

Raise `UserError` (or a subclass) for anything the user fixes by changing an input: a config value, a
file, a model path, a reward server. Its message names the file, key or value and the fix. The CLI
prints `drpo <command>: error: <message>` and exits with 2; `drpo --debug ...` (or DRPO_DEBUG=1) shows
the traceback instead. Dependency-free, so any module may import it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix by changing an input; the message says what and how."""


def corrupt_file(path, err: BaseException, fix: str) -> UserError:
    """`path` could not be read: what the reader said, and how to get a good copy."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if len(reason) > 100 and ". " in reason[:200]:  # torch's messages run on for several sentences
        reason = reason[: reason.index(". ") + 1]
    return UserError(f"{path}: unreadable or truncated ({reason}); {fix}")
