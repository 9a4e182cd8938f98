"""Running a chain of user commands as steps: the orchestration the demo and the study share.

Each step is the command a user would type (tools/pretrain.py, tools/eval_classification.py,
tools/convert_to_d2.py, detection/train_net.py, tools/make_tables.py, tools/make_fmnist_scenes.py): it is
printed, then run by that command's own main() in this process, so PyTorch starts once for the whole chain (about 5-7 s a step on
a slow 2-core CPU) and the progress bars, errors and records are the command's. A step whose folder
holds a record.json (records are written last) is done: running the chain again reuses it, so an
interrupted chain continues where it stopped. A banner `[name i/N | mm:ss]` says which step runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from detection import convert, train_net
from pretrain.evaluation import cli as eval_cli
from pretrain.training import cli as pretrain_cli
from reporting import cli as tables_cli
from rimifm.errors import UserError, clean_message
from synthetic import cli as synthetic_cli

#: the main(argv) behind each user command a chain runs
COMMANDS: dict[str, Callable[[list[str]], int | None]] = {
    "tools/pretrain.py": pretrain_cli.main,
    "tools/eval_classification.py": eval_cli.main,
    "tools/convert_to_d2.py": convert.main,
    "detection/train_net.py": train_net.main,
    "tools/make_tables.py": tables_cli.main,
    "tools/make_fmnist_scenes.py": synthetic_cli.scenes_main,
}


def finished(folder: Path) -> bool:
    """A step is done when its folder holds a record.json that parses (records are written last)."""
    try:
        json.loads((folder / "record.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def shell_quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:,+" for c in arg) else "'" + arg.replace("'", "'\\''") + "'"


class Steps:
    """Numbered, timed steps of one chain (`name` in the banners); `total` is set by the caller."""

    def __init__(self, name: str, total: int = 0):
        self.name, self.total = name, total
        self.t0 = time.perf_counter()
        self.number = 0
        self.ran = 0  # steps run (not reused) so far

    def elapsed(self) -> str:
        mins, secs = divmod(int(time.perf_counter() - self.t0), 60)
        return f"{mins} min {secs:02d} s"

    def banner(self, what: str, skipped: bool = False) -> None:
        self.number += 1
        mins, secs = divmod(int(time.perf_counter() - self.t0), 60)
        state = "done already, reused" if skipped else "running"
        print(f"\n[{self.name} {self.number}/{self.total} | {mins:02d}:{secs:02d}] {what} ({state})", flush=True)

    def start(self, what: str, folder: Path) -> bool:
        """Print the step's banner; True when the step is done already (its folder has a record)."""
        done = finished(folder)
        self.banner(what, skipped=done)
        return done

    def run(self, args: list[str]) -> None:
        """Run one step: the command a user would type, echoed, then executed by its own main() in this process.

        A step's error stops the chain with that step's message.
        """
        print("  $ " + " ".join(shell_quote(str(a)) for a in ["python", *args]), flush=True)
        self.ran += 1
        main = COMMANDS[args[0]]
        again = f"Fix it and run the {self.name} again: finished steps are reused"
        try:
            code = main([str(a) for a in args[1:]])
        except UserError as exc:
            raise UserError(f"{self.name} step failed: {' '.join(map(str, args[:2]))} ...: {clean_message(exc)}\n"
                            f"{again}") from None
        if code:
            raise UserError(f"{self.name} step failed (exit {code}): {' '.join(map(str, args[:2]))} ...; the message "
                            f"above says why. {again}")


def read_json(path: Path) -> dict:
    """A record (or any JSON object) a finished step wrote."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); delete its folder and run again to redo that step") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; delete its folder and run again to redo that step")
    return data


__all__ = ["COMMANDS", "Steps", "finished", "read_json", "shell_quote"]
