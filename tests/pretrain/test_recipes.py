"""Every shipped recipe equals the published source it cites, value by value.

The tables below are transcribed by hand from the sources (the files named in `SOURCE`, at the commit
named there), not derived from our configs: a config that drifts from its source fails here. Each
table lists the source's own setting beside the key it maps to.
"""

from __future__ import annotations

import pytest

from pretrain.config import CONFIG_DIR, load_config

SOLO = "vturrisi/solo-learn @ 9187ea39c2c3f43c455ab06664d2b019a9802954"
BYOL_DM = "deepmind/deepmind-research @ d8df4155dc72fc3dfff9f857412168993348ca23"
SIMSIAM_FB = "facebookresearch/simsiam @ a7bc1772896d0dad0806c51f0bb6f3b16d290468"

# solo-learn scripts/pretrain/cifar/byol.yaml + augmentations/asymmetric.yaml + solo/ code defaults
SOLO_BYOL_CIFAR = {
    "METHOD": "byol",
    "MODEL.BACKBONE": "resnet18",                  # backbone.name
    "MODEL.CIFAR_STEM": True,                      # conv1 3x3/1, maxpool removed for cifar
    "MODEL.CIFAR_STEM_PADDING": 2,                 # nn.Conv2d(3, 64, 3, 1, padding=2)
    "MODEL.ZERO_INIT_RESIDUAL": False,             # torchvision default, not set
    "MODEL.PROJ_HIDDEN_DIM": 4096,                 # proj_hidden_dim
    "MODEL.PROJ_OUTPUT_DIM": 256,                  # proj_output_dim
    "MODEL.PRED_HIDDEN_DIM": 4096,                 # pred_hidden_dim
    "MODEL.PROJ_LAYERS": 2,                        # Linear-BN-ReLU-Linear
    "MODEL.SYNC_BN": True,                         # sync_batchnorm
    "BYOL.BASE_MOMENTUM": 0.99,                    # momentum.base_tau
    "BYOL.FINAL_MOMENTUM": 1.0,                    # momentum.final_tau
    "BYOL.LOSS_SCALE": "sum",                      # solo/methods/byol.py: loss(p1, z2) + loss(p2, z1)
    "DATA.IMAGE_SIZE": 32,                         # crop_size
    "DATA.BATCH_SIZE": 256,                        # optimizer.batch_size (one device)
    "DATA.MEAN": [0.4914, 0.4822, 0.4465],         # MEANS_N_STD cifar10
    "DATA.STD": [0.2470, 0.2435, 0.2616],
    "AUG.CROP_MIN_SCALE": 0.08,                    # rrc.min_scale
    "AUG.FLIP_PROB": 0.5,                          # horizontal_flip.prob
    "AUG.JITTER_PROB": 0.8,                        # color_jitter.prob
    "AUG.BRIGHTNESS": 0.4,
    "AUG.CONTRAST": 0.4,
    "AUG.SATURATION": 0.2,
    "AUG.HUE": 0.1,
    "AUG.GRAY_PROB": 0.2,                          # grayscale.prob
    "AUG.BLUR_PROB": [0.0, 0.0],                   # gaussian_prob crop 1, crop 2
    "AUG.SOLARIZE_PROB": [0.0, 0.2],               # solarization.prob crop 1, crop 2
    "AUG.INTERPOLATION": "bicubic",                # RandomResizedCrop(..., BICUBIC)
    "OPTIM.NAME": "lars",
    "OPTIM.BASE_LR": 1.0,                          # optimizer.lr
    "OPTIM.REFERENCE_BATCH_SIZE": 256,             # lr * batch_size * devices / 256
    "OPTIM.MOMENTUM": 0.9,
    "OPTIM.WEIGHT_DECAY": 1e-5,
    "OPTIM.LARS_ETA": 0.02,                        # kwargs.eta
    "OPTIM.LARS_FORM": "solo-learn",               # solo/utils/lars.py
    "OPTIM.LARS_CLIP_LR": True,                    # kwargs.clip_lr
    "OPTIM.LARS_EXCLUDE_BIAS_N_NORM": True,        # kwargs.exclude_bias_n_norm
    "OPTIM.EXCLUDE_BIAS_N_NORM_WD": False,         # exclude_bias_n_norm_wd (default False)
    "OPTIM.WARMUP_EPOCHS": 10.0,                   # scheduler warmup_epochs
    "OPTIM.WARMUP_START_FACTOR": 3e-5,             # warmup_start_lr 3e-5 / lr 1.0
    "OPTIM.FINAL_LR_FACTOR": 0.0,                  # min_lr 0
    "OPTIM.SCHEDULE_INTERVAL": "step",             # scheduler interval "step"
    "OPTIM.PREDICTOR_FIXED_LR": False,
    "ONLINE_LINEAR.ENABLED": True,                 # the classifier of solo/methods/base.py
    "ONLINE_LINEAR.LR": 0.1,                       # optimizer.classifier_lr
    "TRAIN.EPOCHS": 1000,                          # max_epochs
}

# solo-learn scripts/pretrain/cifar/simsiam.yaml + augmentations/symmetric_weak.yaml
SOLO_SIMSIAM_CIFAR = {
    **SOLO_BYOL_CIFAR,
    "METHOD": "simsiam",
    "MODEL.PROJ_HIDDEN_DIM": 2048,
    "MODEL.PROJ_OUTPUT_DIM": 2048,
    "MODEL.PRED_HIDDEN_DIM": 512,
    "MODEL.PROJ_LAYERS": 3,                        # solo/methods/simsiam.py: 3 Linear+BN
    "AUG.SATURATION": 0.4,                         # symmetric_weak: 0.4/0.4/0.4/0.1
    "AUG.BLUR_PROB": [0.5, 0.5],
    "AUG.SOLARIZE_PROB": [0.0, 0.0],
    "OPTIM.NAME": "sgd",
    "OPTIM.BASE_LR": 0.5,
    "OPTIM.WEIGHT_DECAY": 1e-5,
    "OPTIM.EXCLUDE_BIAS_N_NORM_WD": False,         # SGD decays every parameter
    "OPTIM.WARMUP_START_FACTOR": 6e-5,             # warmup_start_lr 3e-5 / lr 0.5
    "OPTIM.PREDICTOR_FIXED_LR": True,              # predictor group static_lr
}
for key in ("BYOL.BASE_MOMENTUM", "BYOL.FINAL_MOMENTUM", "BYOL.LOSS_SCALE", "OPTIM.LARS_ETA", "OPTIM.LARS_FORM", "OPTIM.LARS_CLIP_LR",
            "OPTIM.LARS_EXCLUDE_BIAS_N_NORM"):
    SOLO_SIMSIAM_CIFAR.pop(key)  # not used by an SGD SimSiam run

CIFAR100 = {"DATA.DATASET": "cifar100", "DATA.MEAN": [0.5071, 0.4865, 0.4409], "DATA.STD": [0.2673, 0.2564, 0.2762]}

# deepmind-research byol/configs/byol.py (300 epochs), utils/optimizers.py, utils/augmentations.py
BYOL_IMAGENET_300 = {
    "METHOD": "byol",
    "MODEL.BACKBONE": "resnet50",
    "MODEL.CIFAR_STEM": False,
    "MODEL.ZERO_INIT_RESIDUAL": False,             # README: paper results without zero-init
    "MODEL.PROJ_HIDDEN_DIM": 4096,
    "MODEL.PROJ_OUTPUT_DIM": 256,
    "MODEL.PRED_HIDDEN_DIM": 4096,
    "MODEL.PROJ_LAYERS": 2,
    "MODEL.SYNC_BN": True,                         # cross_replica_axis
    "BYOL.BASE_MOMENTUM": 0.99,                    # base_target_ema (300 epochs)
    "BYOL.FINAL_MOMENTUM": 1.0,
    "DATA.IMAGE_SIZE": 224,
    "DATA.BATCH_SIZE": 4096,
    "DATA.MEAN": [0.485, 0.456, 0.406],
    "DATA.STD": [0.229, 0.224, 0.225],
    "AUG.CROP_MIN_SCALE": 0.08,
    "AUG.FLIP_PROB": 0.5,
    "AUG.JITTER_PROB": 0.8,
    "AUG.BRIGHTNESS": 0.4,
    "AUG.CONTRAST": 0.4,
    "AUG.SATURATION": 0.2,
    "AUG.HUE": 0.1,
    "AUG.GRAY_PROB": 0.2,
    "AUG.BLUR_PROB": [1.0, 0.1],
    "AUG.SOLARIZE_PROB": [0.0, 0.2],
    "AUG.INTERPOLATION": "bicubic",
    "OPTIM.NAME": "lars",
    "OPTIM.BASE_LR": 0.3,                          # base_learning_rate (300 epochs)
    "OPTIM.REFERENCE_BATCH_SIZE": 256,             # lr = base * batch / 256
    "OPTIM.MOMENTUM": 0.9,
    "OPTIM.WEIGHT_DECAY": 1e-6,                    # weight_decay (300 epochs)
    "OPTIM.LARS_ETA": 1e-3,
    "OPTIM.LARS_FORM": "byol",                     # eta |w| / |g + wd w|
    "OPTIM.LARS_CLIP_LR": False,
    "OPTIM.LARS_EXCLUDE_BIAS_N_NORM": True,        # exclude_bias_and_norm
    "OPTIM.EXCLUDE_BIAS_N_NORM_WD": True,          # the same filter for weight decay
    "OPTIM.WARMUP_EPOCHS": 10.0,
    "OPTIM.WARMUP_START_FACTOR": 0.0,              # linear from 0
    "OPTIM.FINAL_LR_FACTOR": 0.0,                  # cosine to 0
    "OPTIM.SCHEDULE_INTERVAL": "step",
    "TRAIN.EPOCHS": 300,
}
BYOL_IMAGENET_1000 = {**BYOL_IMAGENET_300, "BYOL.BASE_MOMENTUM": 0.996, "OPTIM.BASE_LR": 0.2,
                      "OPTIM.WEIGHT_DECAY": 1.5e-6, "TRAIN.EPOCHS": 1000}

# facebookresearch/simsiam main_simsiam.py (defaults + README command), simsiam/builder.py, loader.py
SIMSIAM_IMAGENET = {
    "METHOD": "simsiam",
    "MODEL.BACKBONE": "resnet50",                  # -a resnet50
    "MODEL.CIFAR_STEM": False,
    "MODEL.ZERO_INIT_RESIDUAL": True,              # zero_init_residual=True
    "MODEL.PROJ_HIDDEN_DIM": 2048,                 # prev_dim
    "MODEL.PROJ_OUTPUT_DIM": 2048,                 # --dim
    "MODEL.PRED_HIDDEN_DIM": 512,                  # --pred-dim
    "MODEL.PROJ_LAYERS": 3,
    "MODEL.SYNC_BN": True,                         # convert_sync_batchnorm
    "DATA.IMAGE_SIZE": 224,
    "DATA.BATCH_SIZE": 512,                        # --batch-size
    "DATA.MEAN": [0.485, 0.456, 0.406],
    "DATA.STD": [0.229, 0.224, 0.225],
    "AUG.CROP_MIN_SCALE": 0.2,                     # RandomResizedCrop(224, scale=(0.2, 1.))
    "AUG.FLIP_PROB": 0.5,
    "AUG.JITTER_PROB": 0.8,
    "AUG.BRIGHTNESS": 0.4,
    "AUG.CONTRAST": 0.4,
    "AUG.SATURATION": 0.4,
    "AUG.HUE": 0.1,
    "AUG.GRAY_PROB": 0.2,
    "AUG.BLUR_PROB": [0.5, 0.5],                   # GaussianBlur([.1, 2.]) p=0.5, both views
    "AUG.SOLARIZE_PROB": [0.0, 0.0],               # no solarisation
    "AUG.INTERPOLATION": "bilinear",
    "OPTIM.NAME": "sgd",
    "OPTIM.BASE_LR": 0.05,                         # --lr, init_lr = lr * batch / 256
    "OPTIM.REFERENCE_BATCH_SIZE": 256,
    "OPTIM.MOMENTUM": 0.9,
    "OPTIM.WEIGHT_DECAY": 1e-4,
    "OPTIM.EXCLUDE_BIAS_N_NORM_WD": False,         # SGD(model.parameters(), weight_decay=...)
    "OPTIM.WARMUP_EPOCHS": 0.0,
    "OPTIM.FINAL_LR_FACTOR": 0.0,
    "OPTIM.SCHEDULE_INTERVAL": "epoch",            # adjust_learning_rate per epoch
    "OPTIM.PREDICTOR_FIXED_LR": True,              # --fix-pred-lr
    "TRAIN.EPOCHS": 100,
}

RECIPES = {
    "cifar10_byol.yaml": (SOLO, SOLO_BYOL_CIFAR),
    "cifar100_byol.yaml": (SOLO, {**SOLO_BYOL_CIFAR, **CIFAR100}),
    "cifar10_simsiam.yaml": (SOLO, SOLO_SIMSIAM_CIFAR),
    "cifar100_simsiam.yaml": (SOLO, {**SOLO_SIMSIAM_CIFAR, **CIFAR100}),
    "imagenet_byol.yaml": (BYOL_DM, BYOL_IMAGENET_300),
    "imagenet_byol_1000ep.yaml": (BYOL_DM, BYOL_IMAGENET_1000),
    "imagenet_simsiam.yaml": (SIMSIAM_FB, SIMSIAM_IMAGENET),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_equals_its_source(name):
    source, table = RECIPES[name]
    cfg = load_config(name)
    wrong = {key: (_get(cfg, key), want) for key, want in table.items()
             if (list(_get(cfg, key)) if isinstance(want, list) else _get(cfg, key)) != want}
    assert not wrong, f"{name} differs from {source}: {{key: (ours, source)}} = {wrong}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_header_cites_its_source_commit(name):
    source, _ = RECIPES[name]
    repo, commit = source.split(" @ ")
    header = (CONFIG_DIR / name).read_text(encoding="utf-8")
    assert repo in header and commit in header


def test_every_shipped_recipe_is_checked():
    """A new non-synthetic config must come with its source table here."""
    shipped = {p.name for p in CONFIG_DIR.glob("*.yaml")
               if not p.name.startswith(("synthetic_", "fmnist_"))}
    assert shipped == set(RECIPES)
