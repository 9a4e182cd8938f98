"""A generated data folder that is written whole or not at all, and reused when its settings match.

Both generators of this project (the synthetic benchmark, the Fashion-MNIST scenes) write one folder
with a `meta.json` last: its presence marks a complete set, and it holds what made the set (format,
version, seed, sizes, classes and any source fingerprint). `GeneratedFormat.generate`:

* reuses an existing complete set made with the same settings, untouched;
* refuses (one line naming the difference and `--force`) a set made with other settings, a
  half-written folder, or a folder that does not look like one of its sets (even with force);
* writes into a temporary sibling folder and renames it into place, so an interruption never leaves
  a half-written set, and removes the leftovers of runs that died.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rimifm.errors import UserError


def write_text(path: Path, text: str) -> None:
    """UTF-8 with '\\n' line ends on every platform (byte-identical output)."""
    path.write_bytes(text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """JSON with sorted keys and a final newline (byte-stable)."""
    return json.dumps(obj, sort_keys=True, indent=2) + "\n"


def check_seed(seed: Any) -> int:
    """The seed as an int in [0, 2**63); UserError naming --seed otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise UserError(f"seed (--seed) must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def option_name(key: str) -> str:
    """A size key as the user sees it: `det_test (--det-test)`."""
    return f"{key} (--{key.replace('_', '-')})"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a harmless probe on Windows: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Delete `<out>.partial-<pid>` / `<out>.old-<pid>` folders left by runs that are no longer alive."""
    candidates: Iterable[Path] = list(out.parent.glob(f"{out.name}.partial-*")) + \
        list(out.parent.glob(f"{out.name}.old-*"))
    for path in candidates:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class GeneratedFormat:
    """One kind of generated folder: its identity, its size options and its layout."""

    format: str                       #: meta.json's "format"
    version: int                      #: bumped whenever the same settings would give other files
    what: str                         #: how messages name a set ("synthetic set")
    command: str                      #: the command that makes one, with {root} for the folder
    classes: tuple[str, ...]
    defaults: Mapping[str, int]       #: every size option and its default
    limits: Mapping[str, tuple[int, int]]  #: smallest and largest accepted value of each
    folders: tuple[str, ...]          #: sub-folders a complete set has
    layout: frozenset[str] = field(default=frozenset())  #: top-level names (besides meta.json)

    # ------------------------------------------------------------------------ settings

    def resolve_sizes(self, sizes: Mapping[str, Any]) -> dict[str, int]:
        """Defaults overridden by `sizes` (None = default), each checked against its limits."""
        unknown = sorted(set(sizes) - set(self.defaults))
        if unknown:
            raise UserError(f"unknown size option(s) {', '.join(unknown)}; known: {', '.join(self.defaults)}")
        merged = dict(self.defaults)
        merged.update({k: v for k, v in sizes.items() if v is not None})
        out: dict[str, int] = {}
        for key, value in merged.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise UserError(f"{option_name(key)} must be an integer, got {value!r}")
            lo, hi = self.limits[key]
            if not lo <= value <= hi:
                raise UserError(f"{option_name(key)} must be between {lo} and {hi}, got {value}")
            out[key] = int(value)
        return out

    def _make(self, root: Path, force: bool = False) -> str:
        return "`" + self.command.format(root=root) + (" --force`" if force else "`")

    # ------------------------------------------------------------------------ reading

    def read_meta(self, out_dir: str | os.PathLike) -> dict[str, Any]:
        """Load and validate `out_dir/meta.json`; UserError if missing or not valid."""
        root = Path(out_dir)
        path = root / "meta.json"
        if not path.is_file():
            raise UserError(f"no {self.what} at {root} (meta.json missing); create it with {self._make(root)}")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path} is not readable JSON ({exc}); regenerate with --force") from exc
        if not isinstance(meta, dict) or meta.get("format") != self.format:
            raise UserError(f"{path} is not the meta.json of a {self.what} (format is not {self.format!r})")
        problems = []
        if meta.get("version") != self.version:
            problems.append(f"version {meta.get('version')!r} (expected {self.version})")
        seed = meta.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            problems.append("seed missing")
        sizes = meta.get("sizes")
        if not isinstance(sizes, dict) or set(sizes) != set(self.defaults) or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes.values()):
            problems.append("sizes missing or incomplete")
        if meta.get("classes") != list(self.classes):
            problems.append("classes differ from this version's")
        missing = [d for d in self.folders if not (root / d).is_dir()]
        if missing:
            problems.append(f"missing folder(s) {', '.join(missing)}")
        if problems:
            raise UserError(f"{self.what} at {root} is not valid: {'; '.join(problems)}; regenerate it with "
                            f"{self._make(root, force=True)}")
        return meta

    def is_complete(self, out_dir: str | os.PathLike) -> bool:
        """True when `out_dir` holds a finished set (valid meta.json, written last)."""
        try:
            self.read_meta(out_dir)
        except UserError:
            return False
        return True

    def _stored_version(self, root: Path) -> Any:
        """The `version` in root/meta.json when it is a meta.json of this format, else None."""
        try:
            meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return meta.get("version") if isinstance(meta, dict) and meta.get("format") == self.format else None

    @staticmethod
    def _differences(meta: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
        diffs = [] if meta["seed"] == wanted["seed"] else [f"seed {meta['seed']} (requested {wanted['seed']})"]
        diffs += [f"{k} {meta['sizes'][k]} (requested {v})" for k, v in wanted["sizes"].items()
                  if meta["sizes"][k] != v]
        diffs += [f"{k} {meta.get(k)!r} (requested {v!r})" for k, v in wanted.items()
                  if k not in ("seed", "sizes") and meta.get(k) != v]
        return diffs

    def _check_replaceable(self, out: Path) -> None:
        """Refuse to delete (even with force) a folder that does not look like one of these sets."""
        try:
            ours = json.loads((out / "meta.json").read_text(encoding="utf-8")).get("format") == self.format
        except (OSError, ValueError, AttributeError):
            ours = False
        extra = sorted(p.name for p in out.iterdir() if p.name not in self.layout | {"meta.json"})
        if not ours and extra:
            raise UserError(f"refusing to delete {out}: it does not look like a {self.what} (it contains "
                            f"{', '.join(extra[:5])}); delete it yourself or choose another --out")

    # ------------------------------------------------------------------------ writing

    def generate(self, out_dir: str | os.PathLike, seed: int, sizes: dict[str, int],
                 write_all: Callable[[Path], None], force: bool = False,
                 extra: Mapping[str, Any] | None = None) -> Path:
        """Create the set in `out_dir` with `write_all(folder)` and return its path (see the module doc).

        `sizes` must be resolved; `extra` adds settings (JSON values) to meta.json that a reused set
        must match too, such as a fingerprint of the source data.
        """
        wanted: dict[str, Any] = {"seed": seed, "sizes": dict(sizes), **dict(extra or {})}
        out = Path(out_dir)
        if out.exists() or out.is_symlink():
            if not out.is_dir():
                raise UserError(f"{out} exists and is not a folder; choose another --out")
            empty = not any(out.iterdir())
            if not force and not empty:
                if not self.is_complete(out):
                    old_version = self._stored_version(out)
                    if old_version is not None and old_version != self.version:
                        raise UserError(f"{out} holds a version-{old_version} {self.what} and this code makes "
                                        f"version {self.version} (other images): pass --force to regenerate "
                                        "it, or choose another --out")
                    raise UserError(f"{out} exists but is not a complete {self.what} (no valid meta.json): "
                                    f"pass --force to replace it, or choose another --out")
                diffs = self._differences(self.read_meta(out), wanted)
                if not diffs:
                    return out
                raise UserError(f"{out} holds a {self.what} made with different settings: {'; '.join(diffs)}; "
                                f"pass --force to regenerate it, or choose another --out")
            self._check_replaceable(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the parent folder of {out}: {exc}") from exc
        _remove_stale(out)
        tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            write_all(tmp)
            meta = {"format": self.format, "version": self.version, "classes": list(self.classes), **wanted}
            write_text(tmp / "meta.json", json_text(meta))
            if out.exists() or out.is_symlink():
                os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                # Another process may have finished the same set first: keep theirs if it matches.
                if self.is_complete(out) and not self._differences(self.read_meta(out), wanted):
                    return out
                if old.exists() and not out.exists():
                    os.replace(old, out)  # put back what was there
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return out
