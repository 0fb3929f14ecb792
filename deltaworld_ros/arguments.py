"""Command-line plumbing every command shares: the parser whose refusals are one line, running a
command module, the one parser of "HxW" sizes and integer bounds. The flags of the runtime's
settings (engine, K and T) are in runtime/arguments.py."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from types import ModuleType

from .errors import DeltaworldError, UsageError


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are UsageErrors (one line), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def run_command(prog: str, description: str, module: ModuleType, argv: list[str]) -> int:
    """Parse `argv` with the module's arguments and run it; a DeltaworldError ends it with one
    line `<prog>: <message>` and exit code 2 (UsageError) or 1."""
    try:
        parser = CommandParser(prog=prog, description=description)
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(argv)) or 0)
    except DeltaworldError as err:
        print(f"{prog}: {err}".replace("\n", " "), file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


def parse_size(text: str, what: str = "size") -> tuple[int, int]:
    """'96x128' -> (96, 128): height x width, both >= 1; UsageError otherwise."""
    h, sep, w = text.strip().lower().partition("x")
    if sep and h.isdigit() and w.isdigit() and int(h) >= 1 and int(w) >= 1:
        return int(h), int(w)
    raise UsageError(f"{what} must read HxW (height x width, both >= 1), e.g. 96x128; got {text!r}")


def size(text: str) -> tuple[int, int]:
    """parse_size as an argparse type: the refusal names the flag."""
    try:
        return parse_size(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return integer
