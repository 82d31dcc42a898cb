"""`ragtune` command line: one module per subcommand under `ragtune/commands/`.

Each command module defines `register(subparsers)` (argparse only, no heavy imports)
and a `run(args) -> int` that imports what it needs, so `ragtune --help` and
`ragtune <cmd> --help` start without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in `ragtune --help`.
COMMANDS = ["models", "index", "search", "prompt", "ask", "serve", "tune", "adapters", "eval"]


class CLIError(Exception):
    """An error to show the user as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragtune",
        description="Answer questions over your documents and measure whether retrieval (RAG), "
        "in-context learning or fine-tuning serves them best.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ragtune.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"ragtune.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"ragtune {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
