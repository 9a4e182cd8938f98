"""The MNIST family (MNIST, Fashion-MNIST, KMNIST) from its four IDX files in a local folder.

The files are the standard ones (gzip-compressed, or the same names without .gz):
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`.
Images are grey; they are served as RGB (grey replicated to 3 channels) so every backbone and view
pipeline works unchanged. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

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


class IDXSource(Dataset):
    """The train (60k) or t10k (10k) split of an MNIST-family set, loaded once into memory.

    `option` names the setting that gave `root` in error messages (DATA.ROOT, or --root in the evaluation).
    """

    labelled = True

    def __init__(self, root: str | os.PathLike, train: bool = True, option: str = "DATA.ROOT"):
        base = Path(root)
        if not base.is_dir():
            raise UserError(f"dataset folder {base} does not exist; {idx_hint(option)}")
        image_name, label_name = IDX_FILES[train]
        image_path = find_idx_file(base, image_name, option)
        label_path = find_idx_file(base, label_name, option)
        self.images = read_idx(image_path, IMAGES_MAGIC, option)
        self.targets = read_idx(label_path, LABELS_MAGIC, option).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise UserError(f"{image_path} holds {len(self.images)} images but {label_path} holds "
                            f"{len(self.targets)} labels; the two files must come from the same set")
        if len(self.images) == 0:
            raise UserError(f"{image_path} holds no images; {idx_hint(option)}")
        self.classes = [str(i) for i in range(int(self.targets.max()) + 1)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), int(self.targets[index])

    @property
    def labels(self) -> list[int]:
        return self.targets.tolist()
