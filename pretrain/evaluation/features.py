"""Frozen-backbone features of an evaluation split, computed once per (weights, split, size, branch), cached."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from pretrain.evaluation.knn import extract_features
from rimifm.io import atomic_torch_save

CACHE_VERSION = 1


def cache_key(weights_id: str, split: str, image_size: int, target: bool, dataset_identity: str,
              mean, std) -> str:
    """16-hex key of one cached feature set."""
    blob = json.dumps({"v": CACHE_VERSION, "weights": weights_id, "split": split, "size": image_size,
                       "target": target, "data": dataset_identity, "mean": list(mean), "std": list(std)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_features(backbone: nn.Module, dataset: Dataset, cache_file: Path, batch_size: int = 256,
                    num_workers: int = 0, device: torch.device | str = "cpu",
                    log: Callable[[str], None] = print, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features and labels, read from `cache_file` if present, else computed and saved."""
    if cache_file.is_file():
        try:
            data = torch.load(cache_file, map_location="cpu", weights_only=True)
            if (isinstance(data, dict) and data.get("version") == CACHE_VERSION
                    and data["features"].shape[0] == len(dataset)):
                log(f"features: {name} loaded from cache {cache_file}")
                return data["features"], data["labels"]
        except Exception:  # a torn or foreign file: recompute and overwrite
            pass
        log(f"features: {name} cache {cache_file} unusable; recomputing")
    t0 = time.perf_counter()
    feats, labels = extract_features(backbone, dataset, batch_size, num_workers, device)
    atomic_torch_save({"version": CACHE_VERSION, "features": feats, "labels": labels}, cache_file)
    log(f"features: {name} computed ({len(dataset)} images, {time.perf_counter() - t0:.1f}s) -> {cache_file}")
    return feats, labels


__all__ = ["CACHE_VERSION", "cache_key", "cached_features"]
