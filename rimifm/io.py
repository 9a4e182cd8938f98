"""Files written atomically (a reader or a crash never sees half a file) and checkpoints loaded safely."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rimifm.errors import UserError, first_line

#: the "format" field of the checkpoints this suite writes (read back by resume, conversion and evaluation)
PRETRAIN_CHECKPOINT_FORMAT = "rimifm-pretrain"
DETECTION_CHECKPOINT_FORMAT = "rimifm-detection-torchvision"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(fh)` on a temporary file in the target's folder, fsync it, then rename it over `path`.

    A crash (even SIGKILL) at any point leaves either the old file or the new one, never a torn one,
    and no temporary file survives an exception.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        free = shutil.disk_usage(path.parent).free
        raise UserError(f"could not write {path}: the disk (or a quota) is full ({written / 2**20:.0f} MB written, "
                        f"{free / 2**20:.0f} MB free in {path.parent} once that was removed); free some space "
                        "or write elsewhere (OUTPUT_DIR, --out)") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _disk_full(err: BaseException) -> bool:
    """Whether a write failed for want of space: ENOSPC or EDQUOT, or torch.save's symptom of them (its zip
    writer reports a short write as 'unexpected pos A vs B')."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "unexpected pos" in str(err)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save, atomically."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_pickle(obj: Any, path: str | os.PathLike, protocol: int = 4) -> Path:
    """pickle.dump, atomically."""
    return atomic_write(path, lambda fh: pickle.dump(obj, fh, protocol=protocol))


def trim_json_lines(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines log (atomically) with only the rows `keep` accepts, dropping lines torn by a kill:
    how a resumed run forgets what it logged after its checkpoint."""
    import json

    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and keep(row):
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def clean_stale_tmp(folder: str | os.PathLike) -> None:
    """Remove temporary files an earlier, killed process left in `folder` (names as atomic_write makes)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, unsafe_legacy_pickle: bool = False,
                    unsafe_flag: str | None = "--unsafe-legacy-pickle") -> Any:
    """torch.load with weights_only=True; a legacy pickle of Python objects needs the explicit unsafe flag.

    `unsafe_flag` names, in the error message, the option that sets `unsafe_legacy_pickle` (None: the
    caller has no such option, as when resuming, which only takes checkpoints this tool wrote).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe_legacy_pickle)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported global" in msg:
            found = re.search(r"GLOBAL (\S+)", msg)
            detail = f" such as {found.group(1)}" if found else ""
            advice = (f"If you trust where the file came from, rerun with {unsafe_flag} (loads with "
                      "weights_only=False, which can execute code)" if unsafe_flag else
                      "Only checkpoints written by this tool can be used here")
            raise UserError(f"{path} is a legacy pickle holding Python objects{detail} besides tensors; safe "
                            f"loading refuses it. {advice}") from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({first_line(msg)})") from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError, ... on non-checkpoints
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                        f"{first_line(str(exc))})") from None
