"""The two generators' commands.

python tools/make_synthetic.py --out DIR [--seed S] [--pretrain-images N] ... [--force]
    the deterministic synthetic benchmark (pretraining, classification and detection splits);
python tools/make_fmnist_scenes.py [--root IDX_DIR] [--out DIR] [--seed S] [--trainval N] ... [--force]
    the Fashion-MNIST scenes detection set.
"""

from __future__ import annotations

import argparse
import os
import time

from rimifm.config import dataset_root
from rimifm.errors import UserError, run_cli
from rimifm.idx import FMNIST_PLACES, find_fmnist
from synthetic import fmnist_scenes
from synthetic.generator import DEFAULT_SIZES, generate, is_complete, read_meta


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; every size of DEFAULT_SIZES is an option (defaults shown in --help)."""
    p = argparse.ArgumentParser(description="Generate the deterministic synthetic benchmark "
                                            "(reused if DIR already holds the same set).",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python tools/make_synthetic.py --out datasets/synthetic
  python tools/make_synthetic.py --out datasets/synthetic-big --seed 1 --pretrain-images 20000
""")
    p.add_argument("--out", required=True, help="output folder (created atomically)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for key, value in DEFAULT_SIZES.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None,
                       help=f"default {value}")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds something else")
    return p


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the set and print a one-line summary."""
    args = build_parser().parse_args(argv)
    sizes = {k: getattr(args, k) for k in DEFAULT_SIZES}
    start = time.perf_counter()
    reused = not args.force and is_complete(args.out)  # if settings differ, generate() raises
    out = generate(args.out, seed=args.seed, force=args.force, **sizes)
    meta = read_meta(out)
    s, n_cls = meta["sizes"], len(meta["classes"])
    what = "reused existing" if reused else "generated"
    print(f"{what} synthetic set at {out} (seed {args.seed}): {s['pretrain_images']} pretrain, "
          f"{s['cls_train_per_class'] * n_cls}+{s['cls_val_per_class'] * n_cls} classification "
          f"({n_cls} classes, {s['image_size']}px), {s['det_trainval']}+{s['det_test']} detection "
          f"({s['det_image_size']}px) images in {time.perf_counter() - start:.1f} s")
    return 0


def build_scenes_parser() -> argparse.ArgumentParser:
    """Options of make_fmnist_scenes: the IDX folder, the output and every size of the scenes."""
    p = argparse.ArgumentParser(description="Compose the Fashion-MNIST scenes detection set (VOC layout and COCO "
                                            "JSON; reused if DIR already holds the same set).",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python tools/make_fmnist_scenes.py --root /usr/share/datasets/fashion-mnist
  python tools/make_fmnist_scenes.py --root datasets/fashion-mnist --out datasets/scenes-big --trainval 2000 --force
""")
    p.add_argument("--root", default=None,
                   help=f"folder of the four Fashion-MNIST IDX files (default: the first of {', '.join(FMNIST_PLACES)} "
                        "that holds them)")
    p.add_argument("--out", default=None,
                   help="output folder (default $DETECTRON2_DATASETS/fmnist-scenes, where the detection "
                        "configs look; $DETECTRON2_DATASETS defaults to datasets/)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for key, value in fmnist_scenes.DEFAULT_SIZES.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None, help=f"default {value}")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds another scene set")
    return p


def scenes_main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the scene set and print a one-line summary."""
    args = build_scenes_parser().parse_args(argv)
    root = find_fmnist(args.root, "--root")
    if root is None:
        raise UserError(f"no Fashion-MNIST IDX files in {' or '.join(FMNIST_PLACES)}; pass --root DIR "
                        "(`apt-get install dataset-fashion-mnist` installs them under /usr/share/datasets/fashion-mnist)")
    out = args.out or os.path.join(dataset_root(), fmnist_scenes.FOLDER)
    sizes = {k: getattr(args, k) for k in fmnist_scenes.DEFAULT_SIZES}
    start = time.perf_counter()
    reused = not args.force and fmnist_scenes.SCENES.is_complete(out)
    path = fmnist_scenes.generate(root, out, seed=args.seed, force=args.force, **sizes)
    meta = fmnist_scenes.read_meta(path)
    s = meta["sizes"]
    print(f"{'reused existing' if reused else 'generated'} Fashion-MNIST scenes at {path} (seed {args.seed}, items "
          f"from {root}): {s['trainval']} trainval scenes of training items + {s['test']} test scenes of t10k items, "
          f"{s['canvas']} px, {s['items_min']}-{s['items_max']} items of {s['item_min']}-{s['item_max']} px each, "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def cli() -> None:
    """Console entry point of make_synthetic."""
    run_cli(main)


def scenes_cli() -> None:
    """Console entry point of make_fmnist_scenes."""
    run_cli(scenes_main)


if __name__ == "__main__":
    cli()
