"""One exception type for mistakes a user can fix, and a CLI wrapper that prints it cleanly."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input (missing folder, unknown key, wrong checkpoint...): message says what and how to fix."""


def first_line(text: str, empty: str = "no detail") -> str:
    """The first non-blank line of an exception text (for one-line errors); `empty` when there is none."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return empty


def clean_message(exc: BaseException) -> str:
    """The user-facing text of an error, without the worker traceback DataLoader wraps around it."""
    text = str(exc)
    marker = "UserError: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1].strip()
    return text


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line entry point; a UserError prints one line (no traceback) and exits 2."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {clean_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
