"""The MNIST family (MNIST, Fashion-MNIST, KMNIST) as a dataset: one split of its IDX files in memory.

The files are read by rimifm.idx. Images are grey; they are served as RGB (grey replicated to 3
channels) so every backbone and view pipeline works unchanged.
"""

from __future__ import annotations

import os

from PIL import Image
from torch.utils.data import Dataset

from rimifm.idx import load_idx_split


class IDXSource(Dataset):
    """The train (60k) or t10k (10k) split of an MNIST-family set, loaded once into memory.

    `option` names the setting that gave `root` in error messages (DATA.ROOT, or --root in the evaluation).
    """

    labelled = True

    def __init__(self, root: str | os.PathLike, train: bool = True, option: str = "DATA.ROOT"):
        self.images, self.targets = load_idx_split(root, train, option)
        self.classes = [str(i) for i in range(int(self.targets.max()) + 1)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), int(self.targets[index])

    @property
    def labels(self) -> list[int]:
        return self.targets.tolist()
