"""The `drpo` commands, one module each: the command `drpo X` lives in `drpo/commands/X.py`.

A command module parses arguments and calls the package: it defines `add_arguments(parser)` and
`main(args) -> int`, with its own small argument-parsing helpers and the printing of its results.
The logic stays in the package modules (`drpo.eval.sample`, `drpo.fetch`, `drpo.world`, ...), which
define no command line. `drpo.cli.COMMANDS` names each command's module; a module is imported only
when its command runs (or shows its --help), so anything heavy is imported inside `main`, or at
module level only for a command whose logic module imports it anyway.
"""
