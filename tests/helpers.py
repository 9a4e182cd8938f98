"""Helpers shared by the tests (tiny data, tiny-model overrides, converted weights); import them from here."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 16, seed: int = 0,
                      labelled: bool = True) -> Path:
    """Write a tiny dataset whose classes differ in their dominant colour channel."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        folder = root / f"class{c}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = (rng.random((size, size, 3)) * 90).astype(np.uint8)
            a[..., c % 3] += 130
            Image.fromarray(a).save(folder / f"c{c}_{i:03d}.png")
    return root

def tiny_overrides(tiny_data: dict[str, Path], out_dir: Path, **extra) -> list[str]:
    """KEY VALUE overrides for a seconds-long run of the CPU-scale ResNet (resnet_tiny) on 16x16 images:
    a checkpoint of about 1 MB, where ResNet-18's is 128 MB (CI machines can be short of disk)."""
    kv = {
        "MODEL.BACKBONE": "resnet_tiny",
        "DATA.DATASET": "imagefolder", "DATA.ROOT": str(tiny_data["train"]), "DATA.KNN_VAL": str(tiny_data["val"]),
        "DATA.IMAGE_SIZE": "16", "DATA.BATCH_SIZE": "8", "DATA.NUM_WORKERS": "0",
        "MODEL.PROJ_HIDDEN_DIM": "32", "MODEL.PROJ_OUTPUT_DIM": "16", "MODEL.PRED_HIDDEN_DIM": "32",
        "TRAIN.EPOCHS": "2", "TRAIN.KNN_PERIOD": "0", "TRAIN.PROGRESS": "false", "TRAIN.TENSORBOARD": "false",
        "TRAIN.LOG_PERIOD": "1", "OUTPUT_DIR": str(out_dir),
    }
    kv.update({k: str(v) for k, v in extra.items()})
    return [x for pair in kv.items() for x in pair]

def converted_resnet_pkl(tmp_path: Path, arch: str) -> tuple[Path, dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """A random torchvision ResNet with non-trivial norm parameters and statistics (so that a missed
    tensor would show), converted to detectron2's .pkl: (path, converted d2 tensors, torchvision state)."""
    import torchvision

    from rimifm.d2_pkl import save_d2_pkl
    from rimifm.resnet_weights import convert_checkpoint

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    conv = convert_checkpoint({"state_dict": net.state_dict()})
    path = tmp_path / f"{arch}.pkl"
    save_d2_pkl(conv.model, path)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.") and "num_batches" not in k}
    return path, conv.model, state



class MainResult(NamedTuple):
    """What run_main gives back: the fields of subprocess.CompletedProcess the tests read."""

    returncode: int
    stdout: str
    stderr: str


def run_main(main, argv: list, capsys, threads: int | None = None) -> MainResult:
    """Run a command's main(argv) in this process as its console script would (rimifm.errors.run_cli: a
    UserError is one `error:` line and exit 2). Saves a Python and torch start-up per call compared with a
    subprocess. `threads`: torch threads for the call (1 = as the child processes with OMP_NUM_THREADS=1)."""
    import pytest

    from rimifm.errors import run_cli

    capsys.readouterr()
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: main([str(a) for a in argv]))
    finally:
        torch.set_num_threads(before)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return MainResult(code if isinstance(code, int) else 1, out, err)


def make_idx_dataset(root: Path, train: int = 20, test: int = 10, classes: int = 3, size: int = 28, seed: int = 0,
                     gz: bool = True, arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four IDX files of an MNIST-like set (grey uint8 images, uint8 labels) under `root`, gzip
    compressed or not; returns {"train": (images, labels), "test": (images, labels)} as written.

    The images are uniform noise and the labels cycle through `classes`, unless `arrays` gives both splits."""
    import gzip
    import struct

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n in (("train", "train", train), ("test", "t10k", test)):
        if arrays is not None:
            images, labels = arrays[split]
        else:
            images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
            labels = (np.arange(n) % classes).astype(np.uint8)
        for name, magic, array in ((f"{prefix}-images-idx3-ubyte", 0x803, images),
                                   (f"{prefix}-labels-idx1-ubyte", 0x801, labels)):
            data = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
            if gz:
                with gzip.open(root / f"{name}.gz", "wb") as fh:
                    fh.write(data)
            else:
                (root / name).write_bytes(data)
        written[split] = (images, labels)
    return written
