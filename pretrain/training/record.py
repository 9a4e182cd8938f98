"""The record.json a pretraining run ends by writing, built from the pretrain schema (rimifm/schemas.py)."""

from __future__ import annotations

from pathlib import Path

from pretrain.config import config_hash, config_to_dict, online_linear_views
from rimifm.records import peak_memory_mb
from rimifm.schemas import PretrainRecord, record_to_dict


def _online_linear(cfg, result: dict | None) -> dict | None:
    """The online linear protocol's result for the record (None when it was off)."""
    if not result:
        return None
    return {"top1": result["top1"], "top5": result.get("top5"), "num_val": result["num_val"],
            "lr": cfg.ONLINE_LINEAR.LR, "dataset": dataset_key(cfg), "views": online_linear_views(cfg)}


def dataset_key(cfg) -> str:
    """The dataset's name in records and tables: DATA.DATASET, or DATA.NAME for an imagefolder run (whose format
    says nothing of what it holds: DATA.NAME imagenet100 meets the published ImageNet-100 rows)."""
    return cfg.DATA.NAME if cfg.DATA.DATASET == "imagefolder" and cfg.DATA.NAME else cfg.DATA.DATASET


#: history entries that are not end-of-run metrics (they have fields of their own, or none)
NOT_METRICS = ("train_time_s", "train_images", "online_linear", "knn_curve", "precise_bn_images", "precise_bn_step")


def pretrain_record(cfg, *, out_dir: Path, checkpoint: Path, steps: int, images: int, world_size: int, device,
                    precision: str, history: dict, wall_time_s: float, code_version: str,
                    online_knn: dict | None = None) -> dict:
    """Everything the tables need about one pretraining run (its metrics are the run's `history`)."""
    merged = config_to_dict(cfg)
    record = PretrainRecord(
        run_id=f"pretrain-{out_dir.name}-{config_hash(cfg)[:8]}",
        method=cfg.METHOD,
        rim={k.lower(): v for k, v in merged["RIM"].items()},
        ifm={k.lower(): v for k, v in merged["IFM"].items()},
        backbone=cfg.MODEL.BACKBONE,
        dataset={"name": dataset_key(cfg), "root": cfg.DATA.ROOT, "images": images,
                 **({"format": cfg.DATA.DATASET} if dataset_key(cfg) != cfg.DATA.DATASET else {})},
        epochs=cfg.TRAIN.EPOCHS,
        steps=steps,
        seed=cfg.SEED,
        world_size=world_size,
        device=device.type,
        precision=precision,
        metrics={k: v for k, v in history.items() if k not in NOT_METRICS},
        online_linear=_online_linear(cfg, history.get("online_linear")),
        train_time_s=round(history["train_time_s"], 3) if "train_time_s" in history else None,
        online_knn=online_knn,
        knn_curve=history.get("knn_curve") or None,
        precise_bn=({"images": history["precise_bn_images"], "step": history["precise_bn_step"]}
                    if "precise_bn_images" in history else None),
        config=merged,
        config_hash=config_hash(cfg),
        checkpoint=str(checkpoint),
        output_dir=str(out_dir),
        wall_time_s=round(wall_time_s, 3),
        images_per_s=(round(history["train_images"] / history["train_time_s"], 2)
                      if history.get("train_time_s", 0) > 0 else None),
        peak_memory_mb=peak_memory_mb(device),
        code_version=code_version,
    )
    return record_to_dict(record)
