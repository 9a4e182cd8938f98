"""Score COCO-format detections ([{image_id, category_id, bbox: [x,y,w,h], score}]) with VOC or COCO AP.

VOC: detectron2's PascalVOCDetectionEvaluator definition (11-point for 2007), AP over IoU 0.50:0.95,
with bootstrap standard errors over the split's images (--bootstrap draws; saved as "metrics_se").
COCO: pycocotools COCOeval (bbox), no standard errors. Both print and save AP, AP50, AP75 (x100).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from detection.evaluation.bootstrap import DEFAULT_RESAMPLES, SE_KEYS, voc_ap_with_se
from detection.evaluation.coco_results import read_coco_results_file
from detection.evaluation.voc import VOC_CLASSES
from rimifm.errors import UserError, run_cli
from rimifm.io import atomic_write_text

EXAMPLES = """examples:
  python tools/eval_detections.py dets.json --voc datasets/VOC2007 --split test --year 2007
  python tools/eval_detections.py dets.json --coco instances_test.json --out metrics.json
"""

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detections", help="COCO results JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--voc", metavar="DIR", help="VOC<year> folder (or one holding it)")
    src.add_argument("--coco", metavar="ANNOTATIONS", help="COCO annotations JSON for pycocotools")
    p.add_argument("--split", default="test", help="VOC split file name under ImageSets/Main (default: test)")
    p.add_argument("--year", type=int, default=2007, choices=(2007, 2012),
                   help="VOC year: 2007 uses the 11-point metric, 2012 the area metric (default: 2007)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names in category_id order (default: the 20 VOC classes)")
    p.add_argument("--no-d2-rounding", action="store_true",
                   help="VOC: use full-precision boxes/scores instead of detectron2's text-file rounding")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="B",
                   help="VOC: bootstrap draws over the images for the standard errors; 0: none "
                        f"(default: {DEFAULT_RESAMPLES}; seed 0, so repeatable)")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    return p.parse_args(argv)


def evaluate_coco(detections: str | os.PathLike, annotations: str | os.PathLike) -> dict[str, float]:
    """COCOeval bbox AP, AP50, AP75 (x100); pycocotools' chatter goes to stderr."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for path, what in ((annotations, "annotations"), (detections, "detections")):
        if not Path(path).is_file():
            raise UserError(f"{what} file {path} does not exist")
    try:
        results = json.loads(Path(detections).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"detections file {detections} is not valid JSON ({exc})") from None
    if not isinstance(results, list):
        raise UserError(f"detections file {detections}: expected a JSON list of results")
    with contextlib.redirect_stdout(sys.stderr):
        try:
            gt = COCO(str(annotations))
        except Exception as exc:
            raise UserError(f"cannot read COCO annotations {annotations} ({type(exc).__name__}: {exc})") from None
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        try:
            dt = gt.loadRes(results)
        except Exception as exc:
            raise UserError(f"detections {detections} do not fit {annotations} "
                            f"({type(exc).__name__}: {exc or 'image ids not in the annotations?'})") from None
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0] * 100), "AP50": float(ev.stats[1] * 100), "AP75": float(ev.stats[2] * 100)}


def main(argv: list[str] | None = None) -> int:
    """Evaluate, print one line of metrics, optionally write them as JSON."""
    args = parse_args(argv)
    if args.voc:
        classes = VOC_CLASSES if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes or len(set(classes)) != len(classes):
            raise UserError(f"--classes must list distinct names, got {args.classes!r}")
        if args.bootstrap < 0:
            raise UserError(f"--bootstrap must be 0 (none) or a number of draws, got {args.bootstrap}")
        dets, gt = read_coco_results_file(args.detections, args.voc, split=args.split, year=args.year,
                                          class_names=classes)
        res = voc_ap_with_se(dets, gt, classes, use_07_metric=(args.year == 2007),
                             d2_text_rounding=not args.no_d2_rounding, resamples=args.bootstrap)
        metrics = {k: res[k] for k in ("AP", "AP50", "AP75")}
        if "se" in res:
            metrics["metrics_se"] = res["se"]
        metrics.update(protocol=f"voc{args.year}-{args.split}", metric=res["metric"],
                       per_class_AP50={k: v["AP50"] for k, v in res["per_class"].items()})
        if res["classes_without_positives"]:
            print(f"warning: no non-difficult ground truth for {', '.join(res['classes_without_positives'])}; "
                  "their AP follows detectron2's formula (0 or NaN)", file=sys.stderr)
    else:
        metrics = evaluate_coco(args.detections, args.coco)
        metrics.update(protocol="coco-bbox")
    print(f"{metrics['protocol']}: AP {metrics['AP']:.2f}  AP50 {metrics['AP50']:.2f}  AP75 {metrics['AP75']:.2f}")
    if se := metrics.get("metrics_se"):
        parts = "  ".join(f"{k} n/a" if se[k] is None else f"{k} {se[k]:.2f}" for k in SE_KEYS)
        print(f"standard errors (bootstrap over images, {se['resamples']} draws): {parts}")
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2) + "\n")
    return 0



def cli() -> None:
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    cli()
