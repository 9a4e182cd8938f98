"""Create the deterministic synthetic benchmark (pretraining, classification and detection splits).

Usage: python tools/make_synthetic.py --out DIR [--seed S] [--pretrain-images N] ... [--force]
"""

from __future__ import annotations

import argparse
import time

from rimifm.errors import run_cli
from synthetic.generator import DEFAULT_SIZES, generate, is_complete, read_meta


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; every size of DEFAULT_SIZES is an option (defaults shown in --help)."""
    p = argparse.ArgumentParser(description="Generate the deterministic synthetic benchmark "
                                            "(reused if DIR already holds the same set).")
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



def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
