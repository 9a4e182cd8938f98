#!/usr/bin/env python
"""Time the vectorised VOC evaluator against the literal per-detection loop (and detectron2's, if installed).

Random but VOC-like data: ~3 GT per image (20% difficult), ~100 detections per image (a few
jittered hits per GT with higher scores, the rest background boxes with low scores), float32
boxes and scores like a detector's. Our evaluator runs on all images; the literal loops are slow
(one Python iteration per detection, class and IoU threshold), so they run on the first
--ref-images images, where all results are also checked to agree, and their full-size time is
extrapolated linearly.

  python benchmarks/voc_eval_speed.py                  # 4952 images (VOC07 test), loops on 1000
  python benchmarks/voc_eval_speed.py --images 1000 --ref-images 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from voc_reference import reference_voc_eval  # the slow reference beside this script, not in the package

from detection.evaluation.voc import VOC_CLASSES, voc_ap


def make_data(n_images: int, dets_per_image: int, num_classes: int, seed: int) -> tuple[dict, dict]:
    """VOC-like ground truth (XML coordinates) and detections (detectron2 coordinates)."""
    rng = np.random.default_rng(seed)
    W, H = 500.0, 375.0
    gt, det_parts = {}, []
    n_gt = rng.poisson(3.0, n_images).clip(0, 20)
    for i in range(n_images):
        m = int(n_gt[i])
        wh = np.stack([rng.uniform(20, W * 0.8, m), rng.uniform(20, H * 0.8, m)], axis=1).round()
        xy = np.stack([rng.uniform(1, W - wh[:, 0]), rng.uniform(1, H - wh[:, 1])], axis=1).round()
        labels = rng.integers(0, num_classes, m)
        gt[f"{i:06d}"] = {"boxes": np.c_[xy, xy + wh], "labels": labels, "difficult": rng.random(m) < 0.2}
        # hits: a few jittered boxes per GT
        hits = rng.integers(1, 6, m) if m else np.zeros(0, int)
        src = np.repeat(np.arange(m), hits)
        k = len(src)
        jitter = rng.normal(0, 1, (k, 4)) * np.repeat(wh, hits, axis=0)[:, [0, 1, 0, 1]] * rng.choice([0.03, 0.15], (k, 1))
        hb = np.c_[xy, xy + wh][src] + jitter
        hb[:, :2] -= 1
        hl = np.where(rng.random(k) < 0.9, labels[src], rng.integers(0, num_classes, k))
        hs = rng.beta(5, 2, k)
        # background: the rest, low scores
        r = max(dets_per_image - k, 0)
        bwh = np.stack([rng.uniform(10, W / 2, r), rng.uniform(10, H / 2, r)], axis=1)
        bxy = np.stack([rng.uniform(0, W - bwh[:, 0]), rng.uniform(0, H - bwh[:, 1])], axis=1)
        bb = np.c_[bxy, bxy + bwh]
        det_parts.append((np.full(k + r, i), np.r_[hb, bb], np.r_[hs, rng.beta(1, 6, r)], np.r_[hl, rng.integers(0, num_classes, r)]))
    img = np.concatenate([p[0] for p in det_parts])
    ids = np.array([f"{i:06d}" for i in range(n_images)], dtype=object)[img]
    dets = {"image_ids": ids, "boxes": np.concatenate([p[1] for p in det_parts]).astype(np.float32),
            "scores": np.concatenate([p[2] for p in det_parts]).astype(np.float32).astype(np.float64),
            "labels": np.concatenate([p[3] for p in det_parts]).astype(np.int64)}
    return gt, dets


def subset(gt: dict, dets: dict, n: int) -> tuple[dict, dict]:
    keep_ids = list(gt)[:n]
    keep = np.isin(dets["image_ids"].astype(str), keep_ids)
    return {k: gt[k] for k in keep_ids}, {k: v[keep] for k, v in dets.items()}


def run_detectron2(gt: dict, dets: dict, classes: list[str], use_07_metric: bool) -> tuple[float, float] | None:
    """detectron2's own voc_eval on files written like its evaluator does; (seconds, AP) or None."""
    try:
        from detectron2.evaluation.pascal_voc_evaluation import voc_eval
    except Exception as exc:  # not installed, or broken install
        print(f"detectron2: not importable ({type(exc).__name__}); skipped")
        return None
    with tempfile.TemporaryDirectory(prefix="voc_bench_") as tmp:
        root = Path(tmp)
        (root / "Annotations").mkdir()
        for image_id, rec in gt.items():
            objs = "".join(
                f"<object><name>{classes[int(c)]}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>{int(d)}</difficult><bndbox><xmin>{int(b[0])}</xmin><ymin>{int(b[1])}</ymin>"
                f"<xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>"
                for b, c, d in zip(rec["boxes"], rec["labels"], rec["difficult"]))
            (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
        (root / "set.txt").write_text("".join(f"{k}\n" for k in gt))
        lines: dict[int, list[str]] = {}
        for image_id, box, score, cls in zip(dets["image_ids"], dets["boxes"], dets["scores"], dets["labels"]):
            xmin, ymin, xmax, ymax = box
            xmin += 1
            ymin += 1
            lines.setdefault(int(cls), []).append(f"{image_id} {score:.3f} {xmin:.1f} {ymin:.1f} {xmax:.1f} {ymax:.1f}")
        start = time.perf_counter()
        table = []
        try:
            for c, name in enumerate(classes):
                (root / f"{name}.txt").write_text("\n".join(lines.get(c, [""])))
                row = []
                for thresh in range(50, 100, 5):
                    _, _, ap = voc_eval(str(root / "{}.txt"), str(root / "Annotations" / "{}.xml"),
                                        str(root / "set.txt"), name, ovthresh=thresh / 100.0,
                                        use_07_metric=use_07_metric)
                    row.append(ap * 100)
                table.append(row)
        except Exception as exc:  # e.g. old detectron2 using np.bool with a new numpy
            print(f"detectron2: voc_eval failed ({type(exc).__name__}: {exc}); skipped")
            return None
        seconds = time.perf_counter() - start
    return seconds, float(np.mean([np.mean(col) for col in zip(*table)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4952, help="images for our evaluator (default: 4952, VOC07 test)")
    p.add_argument("--ref-images", type=int, default=1000, help="images for the literal loops (default: 1000)")
    p.add_argument("--dets-per-image", type=int, default=100)
    p.add_argument("--metric", choices=("07", "area"), default="07")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    classes = list(VOC_CLASSES)
    m07 = args.metric == "07"

    t = time.perf_counter()
    gt, dets = make_data(args.images, args.dets_per_image, len(classes), args.seed)
    n_gt = sum(len(r["labels"]) for r in gt.values())
    print(f"data: {args.images} images, {n_gt} GT, {len(dets['labels'])} detections, {len(classes)} classes, "
          f"10 IoU thresholds, metric {'11-point' if m07 else 'area'} ({time.perf_counter() - t:.1f}s to generate)")

    t = time.perf_counter()
    full = voc_ap(dets, gt, classes, use_07_metric=m07)
    ours_full = time.perf_counter() - t
    print(f"ours (vectorised), all images:     {ours_full:8.3f} s   AP {full['AP']:.3f}  AP50 {full['AP50']:.3f}")

    n_ref = min(args.ref_images, args.images)
    sgt, sdets = subset(gt, dets, n_ref)
    t = time.perf_counter()
    ours_sub = voc_ap(sdets, sgt, classes, use_07_metric=m07)
    ours_small = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_voc_eval(sdets, sgt, classes, use_07_metric=m07)
    ref_small = time.perf_counter() - t
    diff = float(np.nanmax(np.abs(np.array(ours_sub["ap_table"]) - np.array(ref["ap_table"]))))
    scale = len(dets["labels"]) / max(len(sdets["labels"]), 1)
    print(f"ours (vectorised), {n_ref} images: {ours_small:8.3f} s   AP {ours_sub['AP']:.3f}")
    print(f"literal reference, {n_ref} images:  {ref_small:8.3f} s   AP {ref['AP']:.3f}  "
          f"(max |diff| per class/threshold {diff:.1e})")
    print(f"literal reference, extrapolated to all images: ~{ref_small * scale:.0f} s  "
          f"(speed-up ~{ref_small * scale / ours_full:.0f}x)")
    d2 = run_detectron2(sgt, sdets, classes, m07)
    if d2 is not None:
        print(f"detectron2 voc_eval, {n_ref} images: {d2[0]:8.3f} s   AP {d2[1]:.3f}  "
              f"(|diff| vs ours {abs(d2[1] - ours_sub['AP']):.1e}); extrapolated ~{d2[0] * scale:.0f} s")


if __name__ == "__main__":
    main()
