"""The package's errors: the user's input was wrong (UsageError), or something else failed.

`deltaworld` reports either as one line, `deltaworld <command>: <message>`, and exits 2 on a
UsageError, 1 on any other DeltaworldError; the node's parameters follow the same rule. A
message says what was wrong, with the value, and the fix.
"""

from __future__ import annotations


class DeltaworldError(Exception):
    """An error the package reports in one line (exit code 1 from the command line)."""


class UsageError(DeltaworldError, ValueError):
    """The input cannot work: a flag value, a path, a file that is not what it must be
    (exit code 2). A ValueError too, so callers that guard against bad values catch it."""
