"""Inference and evaluation of the torchvision engine: each rank predicts its shard of a test split,
rank 0 gathers the predictions and scores them with the datasets' evaluators (COCO / VOC AP).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from detection.datasets import get_dataset_dicts
from detection.engines.torchvision.amp import autocast
from detection.engines.torchvision.data import TestMapper, evaluate_predictions, postprocess, shard
from rimifm.distributed import Distributed


def _first(batch: list[Any]) -> Any:
    return batch[0]


@torch.no_grad()
def inference(cfg: Any, model: nn.Module, name: str, env: Distributed) -> list[dict[str, Any]]:
    """Predictions of this rank's shard of a test split (all ranks' in order on rank 0)."""
    from detection.evaluation.predictions import make_prediction

    dicts = get_dataset_dicts(name)
    part = shard(len(dicts), env.rank, env.world)
    data = torch.utils.data.Subset(TestMapper(dicts, cfg), list(part))
    workers = cfg.DATALOADER.NUM_WORKERS
    loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=workers, collate_fn=_first)
    was_training = model.training
    model.eval()
    preds = []
    for img, rec in loader:
        with autocast(env.device):
            det = model([img.to(env.device)])[0]
        boxes, scores, labels = postprocess(det, tuple(img.shape[-2:]), (rec["height"], rec["width"]))
        preds.append(make_prediction(rec["image_id"], boxes, scores, labels))
    model.train(was_training)
    if env.world > 1:
        gathered: list[Any] = [None] * env.world
        dist.all_gather_object(gathered, preds)
        preds = [p for rank in gathered for p in rank]
    return preds


def evaluate(cfg: Any, model: nn.Module, env: Distributed) -> dict[str, dict[str, dict[str, float]]]:
    """{dataset: {"bbox": {AP, AP50, AP75, ...}}} of every DATASETS.TEST split (on rank 0; {} elsewhere)."""
    results = {}
    for name in cfg.DATASETS.TEST:
        preds = inference(cfg, model, name, env)
        if env.main:
            results[name] = {"bbox": evaluate_predictions(cfg, name, preds)}
    return results
