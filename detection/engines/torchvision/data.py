"""Data for the torchvision engine: detectron2's input pipeline and evaluation on our datasets and evaluators.

Training images go through detectron2's DatasetMapper steps: read with PIL (EXIF orientation
applied, INPUT.FORMAT channel order), ResizeShortestEdge (MIN_SIZE_TRAIN by choice or range,
MAX_SIZE_TRAIN, bilinear), horizontal flip with p=0.5, boxes transformed and clipped, crowd and
empty boxes dropped; images without annotations are left out (DATALOADER.FILTER_EMPTY_ANNOTATIONS).
Batches follow detectron2's TrainingSampler (an endless stream of seeded permutations, position p
going to rank p % world) and, with DATALOADER.ASPECT_RATIO_GROUPING, its grouping of landscape and
portrait images. Every random choice is keyed by (SEED, stream position), so a resumed run sees the
batches an uninterrupted run would, whatever the number of loader workers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from detection.datasets import get_dataset_dicts, get_metadata, get_spec
from detection.evaluation.bootstrap import se_result_keys
from detection.evaluation.predictions import RESULTS_FILE, evaluate_voc_predictions, write_coco_results
from rimifm.errors import UserError
from rimifm.io import atomic_write_text

logger = logging.getLogger("detection")


# ----------------------------------------------------------------------------- images


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output (h, w): short side to `short`, long side at most `max_size`."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def read_image(record: dict[str, Any], fmt: str) -> np.ndarray:
    """HxWx3 uint8 in INPUT.FORMAT order; UserError when the file is missing, unreadable or of the wrong size."""
    path = record["file_name"]
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise UserError(f"image {path} cannot be read ({exc}); fix or remove it from the split") from None
    h, w = arr.shape[:2]
    if "height" in record and "width" in record and (h, w) != (record["height"], record["width"]):
        raise UserError(f"image {path} is {w}x{h} but its annotation says {record['width']}x{record['height']}; "
                        "fix the annotation's <size> (or the COCO json)")
    return arr[:, :, ::-1] if fmt == "BGR" else arr


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.BILINEAR))


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _sample_key(seed: int, stream: int, position: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, position])


class TrainMapper(torch.utils.data.Dataset):
    """Map (dataset index, stream position) to (image tensor uint8 CHW, {boxes, labels}) with keyed augmentation."""

    def __init__(self, dicts: Sequence[dict[str, Any]], cfg: Any, seed: int, stream: int = 0) -> None:
        self.dicts = dicts
        i = cfg.INPUT
        self.sizes = list(i.MIN_SIZE_TRAIN)
        self.sampling = i.MIN_SIZE_TRAIN_SAMPLING
        self.max_size = i.MAX_SIZE_TRAIN
        self.flip = i.RANDOM_FLIP == "horizontal"
        self.fmt = i.FORMAT
        self.seed, self.stream = seed, stream

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, position = key
        rec = self.dicts[index]
        rng = _sample_key(self.seed, self.stream, position)
        if self.sampling == "choice":
            short = int(self.sizes[rng.integers(len(self.sizes))])
        else:
            short = int(rng.integers(min(self.sizes), max(self.sizes) + 1))
        flip = self.flip and rng.random() < 0.5
        img = read_image(rec, self.fmt)
        h, w = img.shape[:2]
        nh, nw = resized_shape(h, w, short, self.max_size)
        img = _resize(img, nh, nw)
        annos = [a for a in rec.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 4)
        labels = np.array([a["category_id"] for a in annos], dtype=np.int64)
        boxes *= np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
        if flip:
            img = img[:, ::-1]
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = np.minimum(boxes, np.array([nw, nh, nw, nh], dtype=np.float32))
        keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
        return _to_tensor(img), {"boxes": torch.from_numpy(boxes[keep]), "labels": torch.from_numpy(labels[keep])}


def batch_plan(dicts: Sequence[dict[str, Any]], batch: int, seed: int, rank: int, world: int, grouping: bool,
               start_iter: int = 0, stream: int = 0) -> Iterator[list[tuple[int, int]]]:
    """Endless per-rank batches of (dataset index, stream position), skipping the first `start_iter` batches."""
    n = len(dicts)
    landscape = [d["width"] > d["height"] for d in dicts]
    buckets: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    current: list[tuple[int, int]] = []
    emitted = 0
    epoch = 0
    while True:
        perm = np.random.default_rng([seed, stream, 1_000_003, epoch]).permutation(n)
        base = epoch * n
        for j in range((rank - base) % world, n, world):  # stream position base + j goes to rank (base + j) % world
            item = (int(perm[j]), base + j)
            if grouping:
                bucket = buckets[landscape[item[0]]]
                bucket.append(item)
                if len(bucket) < batch:
                    continue
                out = bucket[:]
                bucket.clear()
            else:
                current.append(item)
                if len(current) < batch:
                    continue
                out, current = current, []
            if emitted >= start_iter:
                yield out
            emitted += 1
        epoch += 1


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def train_loader(dicts: Sequence[dict[str, Any]], cfg: Any, seed: int, rank: int, world: int, start_iter: int = 0,
                 stream: int = 0, workers: int | None = None) -> Iterator[list[tuple[torch.Tensor, dict]]]:
    """Endless loader of per-rank batches (IMS_PER_BATCH / world images each)."""
    per_rank = cfg.SOLVER.IMS_PER_BATCH // world
    plan = batch_plan(dicts, per_rank, seed, rank, world, cfg.DATALOADER.ASPECT_RATIO_GROUPING, start_iter, stream)
    workers = cfg.DATALOADER.NUM_WORKERS if workers is None else workers
    loader = torch.utils.data.DataLoader(TrainMapper(dicts, cfg, seed, stream), batch_sampler=plan,
                                         num_workers=workers, collate_fn=_collate,
                                         persistent_workers=False, prefetch_factor=2 if workers else None)
    return iter(loader)


def load_train_dicts(cfg: Any) -> list[dict[str, Any]]:
    """Records of every DATASETS.TRAIN split; without annotations left out when FILTER_EMPTY_ANNOTATIONS."""
    dicts: list[dict[str, Any]] = []
    for name in cfg.DATASETS.TRAIN:
        dicts.extend(get_dataset_dicts(name))
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d.get("annotations", []))]
    if not dicts:
        raise UserError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} holds no image with annotations")
    return dicts


# ----------------------------------------------------------------------------- evaluation


class TestMapper(torch.utils.data.Dataset):
    """Test image resized to MIN_SIZE_TEST / MAX_SIZE_TEST, with its record."""

    def __init__(self, dicts: Sequence[dict[str, Any]], cfg: Any) -> None:
        self.dicts = dicts
        self.short, self.max_size, self.fmt = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self.dicts[index]
        img = read_image(rec, self.fmt)
        nh, nw = resized_shape(img.shape[0], img.shape[1], self.short, self.max_size)
        return _to_tensor(_resize(img, nh, nw)), rec


def shard(n: int, rank: int, world: int) -> range:
    """detectron2's InferenceSampler: contiguous, near-equal shards in rank order."""
    size, left = divmod(n, world)
    sizes = [size + int(r < left) for r in range(world)]
    begin = sum(sizes[:rank])
    return range(begin, begin + sizes[rank])


def postprocess(det: dict[str, torch.Tensor], input_hw: tuple[int, int], out_hw: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """detectron2's detector_postprocess: boxes rescaled to the original image, clipped, empty ones dropped."""
    boxes = det["boxes"].float().cpu().clone()
    sy, sx = out_hw[0] / input_hw[0], out_hw[1] / input_hw[1]
    boxes *= torch.tensor([sx, sy, sx, sy])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_hw[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_hw[0])
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    return boxes[keep].numpy(), det["scores"].float().cpu()[keep].numpy(), det["labels"].cpu()[keep].numpy()


def evaluate_predictions(cfg: Any, name: str, predictions: list[dict[str, Any]]) -> dict[str, float]:
    """{"AP", "AP50", "AP75", ...} of one test split, with our VOC evaluator or pycocotools; writes the results file."""
    out_dir = Path(cfg.OUTPUT_DIR) / "inference" / name
    os.makedirs(out_dir, exist_ok=True)
    meta = get_metadata(name)
    kind = meta.get("evaluator_type")
    if kind == "pascal_voc":
        write_coco_results(out_dir / RESULTS_FILE, predictions)
        res = evaluate_voc_predictions(predictions, meta["dirname"], meta["split"], meta["year"],
                                       meta["thing_classes"])
        saved = ("AP", "AP50", "AP75", "per_class", "metric", "num_positives", "se")
        atomic_write_text(out_dir / "voc_metrics.json",
                          json.dumps({k: res[k] for k in saved if k in res}, indent=2) + "\n")
        logger.info("%s (%s, %d images): AP %.2f AP50 %.2f AP75 %.2f", name, res["metric"], len(predictions),
                    res["AP"], res["AP50"], res["AP75"])
        # the bootstrap standard errors ride along as flat keys; the record takes them as metrics_se
        return {**{k: float(res[k]) for k in ("AP", "AP50", "AP75")}, **se_result_keys(res.get("se"))}
    if kind == "coco":
        # no standard errors: a bootstrap of COCOeval would rerun evaluate/accumulate per draw (minutes on
        # COCO val) or reimplement its accumulation over weighted images; the record has no metrics_se
        return _coco_eval(name, predictions, out_dir)
    raise UserError(f"dataset {name} has evaluator_type {kind!r}; only 'pascal_voc' and 'coco' datasets can be "
                    "evaluated (check DATASETS.TEST)")


def _coco_eval(name: str, predictions: list[dict[str, Any]], out_dir: Path) -> dict[str, float]:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, meta = get_spec(name).load_with_metadata()
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    category_ids = [k for k, _ in sorted(id_map.items(), key=lambda kv: kv[1])]
    path = write_coco_results(out_dir / RESULTS_FILE, predictions, category_ids)
    results = json.loads(path.read_text())
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if not results:
        return {k: 0.0 for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(meta["json_file"])
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v * 100) if v >= 0 else float("nan") for k, v in zip(keys, ev.stats[:6])}
