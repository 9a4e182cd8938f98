"""Seconds per training iteration and peak memory of each available detection engine on the same config.

python benchmarks/detection_speed.py [--config synthetic_r18_fpn.yaml] [--iters 20] [--engines detectron2 torchvision]
       [KEY VALUE ...]

Each engine trains `--iters` iterations through detection/train_net.py in its own process (so peak
memory is its own: GPU memory allocated on CUDA, resident memory on CPU), without precise BN and
without evaluation, into a temporary OUTPUT_DIR; the figures are read from its record.json.
s/iter includes data loading and leaves out the first iteration. Needs the dataset the config
names (the synthetic set: python tools/make_synthetic.py --out datasets/synthetic).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from detection.engines import detectron2_available

REPO = Path(__file__).resolve().parent.parent


def measure(engine: str, config: str, iters: int, overrides: list[str], out: Path) -> dict:
    """Train one engine for `iters` iterations; its record (or the error it printed)."""
    cmd = [sys.executable, str(REPO / "detection" / "train_net.py"), "--config", config, "--engine", engine,
           "SOLVER.MAX_ITER", str(iters), "TEST.PRECISE_BN.ENABLED", "False", "DATASETS.TEST", "()",
           "SOLVER.CHECKPOINT_PERIOD", str(10 * iters), *overrides, "OUTPUT_DIR", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ})
    record = out / "record.json"
    if proc.returncode != 0 or not record.is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(record.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="synthetic_r18_fpn.yaml")
    p.add_argument("--iters", type=int, default=20, help="training iterations per engine (default 20)")
    p.add_argument("--engines", nargs="+", default=None, choices=["detectron2", "torchvision"],
                   help="default: torchvision, plus detectron2 when it is installed")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides for both engines")
    args = p.parse_args(argv)
    engines = args.engines or (["detectron2"] if detectron2_available() else []) + ["torchvision"]
    print(f"config {args.config}, {args.iters} iterations, overrides {args.opts or 'none'}")
    print(f"{'engine':<12} {'s/iter':>8} {'peak MiB':>9}  device")
    with tempfile.TemporaryDirectory(prefix="detection_speed_") as tmp:
        for engine in engines:
            rec = measure(engine, args.config, args.iters, list(args.opts), Path(tmp) / engine)
            if "error" in rec:
                print(f"{engine:<12} failed: {rec['error']}")
                continue
            spi = rec.get("sec_per_iter")
            print(f"{engine:<12} {spi if spi is None else f'{spi:8.3f}':>8} {rec['peak_memory_mb']:9.1f}  "
                  f"{rec['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
