"""argparse pieces shared by the command-line tools."""

from __future__ import annotations

import argparse

from rimifm.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors go through UserError: one `error:` line and exit 2, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see --help)")

