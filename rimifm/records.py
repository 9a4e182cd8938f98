"""record.json: the one summary every run (pretrain, knn, linear, detection) ends by writing (schemas: rimifm/schemas.py)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from rimifm.io import atomic_write_text
from rimifm.schemas import record_to_dict

REPO_ROOT = Path(__file__).resolve().parent.parent


#: paths whose changes leave a checkout clean for `code_version`: reports, docs and other prose (a study report
#: made again while another one waits to be committed is not a change of code)
NOT_CODE = (":(exclude)results", ":(exclude)docs", ":(exclude)*.md")


@functools.cache
def code_version() -> str:
    """Package version plus the git commit (and '-dirty' when a tracked file other than NOT_CODE differs from
    it) when run from a checkout, as it was when first asked in this process: the commands ask when they start,
    so a commit made during a long run does not relabel it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("rimifm")
    except PackageNotFoundError:
        pkg = "0.1.0"
    git = ["git", "-C", str(REPO_ROOT)]
    try:
        sha = subprocess.run([*git, "describe", "--always", "--abbrev=12"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"{pkg}+{sha}{'-dirty' if changed else ''}" if sha else pkg
    except (OSError, subprocess.SubprocessError):
        return pkg


def new_run_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def timestamp() -> str:
    """Now, as records date themselves: local time with its UTC offset, e.g. 2026-12-05T04:40:12+0000."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_record(path: str | os.PathLike, record: Any) -> Path:
    """Write a record (a schema dataclass, or the dict record_to_dict made of one) as sorted, indented JSON
    (stable bytes for the same content), dated now in `finished_at` unless it already carries a date."""
    data = dict(record) if isinstance(record, dict) else record_to_dict(record)
    if not data.get("finished_at"):
        data["finished_at"] = timestamp()
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def stable_hash(data) -> str:
    """First 16 hex digits of the sha256 of sorted JSON: the same content always gives the same id."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated on a CUDA device, else the peak resident memory of this process, in MiB."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:
        return math.nan
