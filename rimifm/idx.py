"""The IDX files of the MNIST family (MNIST, Fashion-MNIST, KMNIST), read from a local folder.

The four standard files (gzip-compressed, or the same names without .gz):
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`.
Every problem (a missing folder or file, a bad magic number, a cut-short file, counts that differ
between images and labels) is one UserError naming the file and what the folder must hold.
Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from rimifm.errors import UserError

IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)


def idx_hint(option: str = "DATA.ROOT") -> str:
    """What the folder must hold, and where to get it."""
    names = ", ".join(name for pair in IDX_FILES.values() for name in pair)
    return (f"{option} must hold the four IDX files of MNIST/Fashion-MNIST/KMNIST ({names}, each .gz or "
            f"not; on Debian: apt-get install dataset-fashion-mnist installs them under "
            f"/usr/share/datasets/fashion-mnist)")


def find_idx_file(root: Path, name: str, option: str = "DATA.ROOT") -> Path:
    """ROOT/NAME.gz, else ROOT/NAME; a UserError naming the expected file when neither exists."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"{root / name}.gz not found; {idx_hint(option)}")


def read_idx(path: Path, magic: int, option: str = "DATA.ROOT") -> np.ndarray:
    """The uint8 array of one IDX file (gzip or raw): checked magic number, big-endian dims, exact size."""
    def bad(what: str) -> UserError:
        return UserError(f"{path} is not a valid IDX file ({what}); {idx_hint(option)}")

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise bad(f"cannot read it: {exc}") from None
    if len(data) < 4:
        raise bad(f"only {len(data)} bytes")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise bad(f"magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad(f"header cut short: {len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise bad(f"{len(data)} bytes, but its header {list(dims)} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_split(root: str | os.PathLike, train: bool = True,
                   option: str = "DATA.ROOT") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels int64 [N]) of the train (True) or t10k (False) split in `root`.

    `option` names the setting that gave `root` (DATA.ROOT, --root) in the error messages.
    """
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"dataset folder {base} does not exist; {idx_hint(option)}")
    image_name, label_name = IDX_FILES[train]
    image_path = find_idx_file(base, image_name, option)
    label_path = find_idx_file(base, label_name, option)
    images = read_idx(image_path, IMAGES_MAGIC, option)
    labels = read_idx(label_path, LABELS_MAGIC, option).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"{image_path} holds {len(images)} images but {label_path} holds "
                        f"{len(labels)} labels; the two files must come from the same set")
    if len(images) == 0:
        raise UserError(f"{image_path} holds no images; {idx_hint(option)}")
    return images, labels


#: where the commands look for Fashion-MNIST when not told: a local copy, then Debian's dataset-fashion-mnist
FMNIST_PLACES = ("datasets/fashion-mnist", "/usr/share/datasets/fashion-mnist")


def has_idx_files(folder: str | os.PathLike) -> bool:
    """True when `folder` holds the four IDX files (each .gz or not); nothing is read."""
    base = Path(folder)
    return all((base / f"{n}.gz").is_file() or (base / n).is_file() for pair in IDX_FILES.values() for n in pair)


def find_fmnist(explicit: str | os.PathLike | None, option: str) -> Path | None:
    """The Fashion-MNIST folder: `explicit` (must hold the files; else a UserError naming `option`), or
    the first of FMNIST_PLACES that holds them, or None."""
    if explicit:
        folder = Path(explicit)
        if not has_idx_files(folder):
            raise UserError(f"{option} {folder}: the folder must hold Fashion-MNIST's four IDX files; "
                            f"{idx_hint(option)}")
        return folder
    return next((Path(p) for p in FMNIST_PLACES if has_idx_files(p)), None)
