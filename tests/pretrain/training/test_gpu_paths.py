"""The GPU paths of the pretraining loop: those a CPU can run are run here (bf16 autocast, channels_last, DDP
over gloo with its BatchNorm handling); those only CUDA can run are marked `cuda` and skip elsewhere with the
reason "needs a CUDA GPU" (bash benchmarks/gpu_check.sh runs them on a GPU)."""

from __future__ import annotations

import contextlib
import io
import os
import socket

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from pretrain.config import load_config
from pretrain.training.loop import PretrainRun
from pretrain.training.setup import resolve_precision
from rimifm.distributed import Distributed
from rimifm.errors import UserError
from tests.helpers import tiny_overrides


def make_run(tiny_data, out, **extra) -> PretrainRun:
    cfg = load_config(None, tiny_overrides(tiny_data, out, **extra))
    return PretrainRun(cfg, "", Distributed(cfg.TRAIN.DEVICE))


def first_batch(run: PretrainRun) -> tuple[torch.Tensor, torch.Tensor]:
    run.dataset.set_epoch(0)
    v1, v2, _ = default_collate([run.dataset[i] for i in range(run.per_rank)])
    return v1, v2


def online_weights(run: PretrainRun) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.named_parameters() if not k.startswith("target_")}


def record_outputs(module: nn.Module, what) -> tuple[list, object]:
    seen: list = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(what(args, out)))
    return seen, handle


# ---------------------------------------------------------------------------------------------- CPU-runnable

def test_precision_resolution():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    cfg = lambda p: load_config(None, ["TRAIN.PRECISION", p])  # noqa: E731
    assert resolve_precision(cfg("auto"), cpu) == "fp32" and resolve_precision(cfg("auto"), gpu) == "bf16"
    assert resolve_precision(cfg("bf16"), cpu) == "bf16" and resolve_precision(cfg("fp16"), gpu) == "fp16"
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        resolve_precision(cfg("fp16"), cpu)


def test_the_cpu_bf16_hazard_is_found_where_onednn_gets_the_weight_gradient_wrong():
    """A strided 3x3 conv fed a 1x1 map: its bf16 weight gradient over the padding taps must be zero (as the
    reference kernel computes it; oneDNN's of PyTorch 2.14.1 did not, docs/pretraining.md), and the run finds
    exactly the layers that meet such a map."""
    from pretrain.method.models import build_backbone
    from pretrain.training.setup import cpu_bf16_hazards

    def grad_over_padding_is_zero(mkldnn: bool) -> bool:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(4, 64, 1, 1, generator=g).bfloat16(), torch.randn(64, 64, 3, 3, generator=g).bfloat16()
        go = torch.randn(4, 64, 1, 1, generator=g).bfloat16()
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            grads = []
            for _ in range(3):
                w.requires_grad_().grad = None
                torch.nn.functional.conv2d(x, w, None, 2, 1).backward(go)
                grads.append(w.grad.float().clone())
        pad = torch.ones(3, 3, dtype=torch.bool)
        pad[1, 1] = False
        return all(bool((gr[:, :, pad] == 0).all()) for gr in grads)

    assert grad_over_padding_is_zero(mkldnn=False)  # the reference kernel: exact
    imagenet_stem = build_backbone("resnet18")
    state, rng = {k: v.clone() for k, v in imagenet_stem.state_dict().items()}, torch.get_rng_state()
    assert cpu_bf16_hazards(imagenet_stem, 16) == ["layer4.0.conv1"]  # layer3 leaves a 1x1 map at 16 px
    assert cpu_bf16_hazards(imagenet_stem, 8) == ["layer3.0.conv1", "layer4.0.conv1"]
    assert cpu_bf16_hazards(imagenet_stem, 24) == [] and cpu_bf16_hazards(imagenet_stem, 64) == []  # 2x2 and more
    # the look leaves the backbone as it was: mode, weights, BN statistics, and the global RNG
    assert imagenet_stem.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in imagenet_stem.state_dict().items())
    assert cpu_bf16_hazards(build_backbone("resnet18", cifar_stem=True), 16) == []


def test_a_bf16_run_on_a_cpu_warns_of_the_layers_onednn_gets_wrong(tiny_data, tmp_path, capsys):
    r18 = {"TRAIN.PRECISION": "bf16", "MODEL.BACKBONE": "resnet18"}
    make_run(tiny_data, tmp_path / "a", **r18)  # ResNet-18, ImageNet stem, 16 px
    assert "warning: bf16 on a CPU: layer4.0.conv1 sees a 1x1 map at DATA.IMAGE_SIZE 16" in capsys.readouterr().out
    make_run(tiny_data, tmp_path / "b", **r18, **{"MODEL.CIFAR_STEM": "true"})
    make_run(tiny_data, tmp_path / "c")  # fp32
    assert "warning: bf16" not in capsys.readouterr().out


@pytest.mark.slow
def test_bf16_autocast_step_on_cpu(tiny_data, tmp_path):
    # batch 2: a CPU without AVX-512 runs bf16 convolutions by a slow fallback (about 1 s per image and step).
    # The CIFAR stem keeps layer4 at 2x2: at 16 px the ImageNet stem leaves it 1x1, and there the bf16 step
    # with RIM+IFM gave NaN in layer4.0.conv1's weight in about 1 run in 8 at batch 2: oneDNN's bf16 weight
    # gradient is wrong for a strided 3x3 conv fed a 1x1 map (the test above; the run warns of it).
    run = make_run(tiny_data, tmp_path, **{"TRAIN.PRECISION": "bf16", "RIM.ENABLED": "true", "IFM.ENABLED": "true",
                                           "DATA.BATCH_SIZE": "2",
                                           "MODEL.CIFAR_STEM": "true"})
    assert run.precision == "bf16"
    conv_out, h1 = record_outputs(run.model.backbone.conv1, lambda a, o: o.dtype)
    head_out, h2 = record_outputs(run.model.projector[0], lambda a, o: o.dtype)
    before = online_weights(run)
    out, lr, momentum = run.step(*first_batch(run), epoch=0)
    h1.remove(), h2.remove()
    assert conv_out and set(conv_out) == {torch.bfloat16}, conv_out  # the autocast really ran in bf16
    assert head_out and set(head_out) == {torch.bfloat16}, head_out
    assert torch.isfinite(out["loss"]) and "ifm_loss" in out
    after = online_weights(run)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in after.values())  # fp32 master weights
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "backbone.conv1.weight" in changed and len(changed) > len(before) // 2
    assert 0 < momentum < 1 and lr > 0


@pytest.mark.slow
def test_channels_last_on_cpu_gives_the_loss_of_contiguous(tiny_data, tmp_path, monkeypatch):
    extra = {"TRAIN.CHANNELS_LAST": "true", "RIM.ENABLED": "true", "RIM.PROB": "1.0", "IFM.ENABLED": "true"}
    plain = make_run(tiny_data, tmp_path / "plain", **extra)  # on a CPU the key is ignored by default
    assert not plain.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(PretrainRun, "CHANNELS_LAST_DEVICES", ("cuda", "cpu"))  # the GPU's path, on the CPU
    cl = make_run(tiny_data, tmp_path / "cl", **extra)
    convs = [m for m in cl.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert cl.model.backbone.conv1.weight.stride() != plain.model.backbone.conv1.weight.stride()
    fmt, handle = record_outputs(cl.model.backbone.conv1,
                                 lambda a, o: a[0].is_contiguous(memory_format=torch.channels_last))
    v1, v2 = first_batch(cl)
    out_cl, _, _ = cl.step(v1, v2, epoch=0)
    handle.remove()
    assert fmt and all(fmt), fmt  # every view reached the first conv channels_last (RIM's zero fill keeps it)
    out_plain, _, _ = plain.step(v1, v2, epoch=0)
    torch.testing.assert_close(out_cl["loss"], out_plain["loss"], rtol=1e-4, atol=1e-5)
    a, b = online_weights(cl), online_weights(plain)
    for k in ("backbone.conv1.weight", "backbone.layer4.0.conv2.weight", "projector.0.weight"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_buffers() if "running_" in k}


def _ddp_worker(rank: int, port: int, overrides: list[str], out_dir: str) -> None:
    """One of two gloo processes: a PretrainRun to the end, with the BN statistics each forward starts from."""
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    cfg = load_config(None, overrides)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        env = Distributed(cfg.TRAIN.DEVICE)
        try:
            run = PretrainRun(cfg, "", env)
            starts: list[dict] = []  # a pre-hook of the module: runs after DDP's buffer broadcast
            run.model.register_forward_pre_hook(lambda m, args: starts.append(_bn_buffers(m)))
            run.run(None)
            ddp = isinstance(run.trained, nn.parallel.DistributedDataParallel)
        finally:
            env.close()
    torch.save({"starts": starts, "end": _bn_buffers(run.model), "ddp": ddp, "stderr": err.getvalue(),
                "params": {k: v.detach().clone() for k, v in run.model.named_parameters()},
                "sync_bn": any(isinstance(m, nn.SyncBatchNorm) for m in run.model.modules())},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_gloo_keeps_per_process_bn_and_broadcasts_rank0_buffers(tiny_data, tmp_path):
    """MODEL.SYNC_BN on CPU: a warning, per-process BatchNorm; DDP still broadcasts rank 0's BN statistics
    before every forward, so both processes start each step from the same statistics (as on GPU without
    SyncBN), the weights stay identical, and the checkpoint holds rank 0's statistics."""
    import torch.multiprocessing as mp

    out = tmp_path / "ddp"
    overrides = tiny_overrides(tiny_data, out, **{"MODEL.SYNC_BN": "true", "TRAIN.EPOCHS": "1", "TRAIN.DEVICE": "cpu"})
    mp.start_processes(_ddp_worker, args=(_free_port(), overrides, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["ddp"] and r1["ddp"]
    assert "SYNC_BN needs GPUs" in r0["stderr"] and "SYNC_BN" not in r1["stderr"]  # only rank 0 warns
    assert not r0["sync_bn"] and not r1["sync_bn"]  # per-process BatchNorm kept
    assert len(r0["starts"]) == len(r1["starts"]) == 3  # 24 images / global batch 8
    for step, (a, b) in enumerate(zip(r0["starts"], r1["starts"])):
        assert a.keys() == b.keys() and any("target_" in k for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a), f"BN statistics differ at the start of step {step}"
    # each process's last forward updated its statistics with its own half of the batch: they differ now
    assert any(not torch.equal(r0["end"][k], r1["end"][k]) for k in r0["end"])
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    saved = torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(saved[k], r0["end"][k]) for k in r0["end"])


# ---------------------------------------------------------------------------------------------- CUDA only

@pytest.fixture
def nccl_group(tmp_path):
    """A one-process NCCL process group (one GPU is enough for the kernels; the exchange is with itself)."""
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    yield dist
    dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_step_with_autocast_and_channels_last(tiny_data, tmp_path, precision):
    run = make_run(tiny_data, tmp_path, **{"TRAIN.DEVICE": "cuda", "TRAIN.PRECISION": precision,
                                           "RIM.ENABLED": "true", "IFM.ENABLED": "true"})
    assert run.device.type == "cuda" and run.model.backbone.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    seen, handle = record_outputs(run.model.backbone.conv1, lambda a, o: (o.dtype, a[0].is_contiguous(
        memory_format=torch.channels_last)))
    before = online_weights(run)
    out, _, _ = run.step(*first_batch(run), epoch=0)
    handle.remove()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    assert seen and all(d == dtype and cl for d, cl in seen), seen
    assert torch.isfinite(out["loss"])
    after = online_weights(run)
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    assert all(torch.isfinite(v).all() for v in after.values())
    if precision == "fp16":
        assert run.scaler.is_enabled() and run.scaler.get_scale() > 0


@pytest.mark.cuda
def test_cuda_sync_batchnorm_forward_and_backward(nccl_group):
    """SyncBatchNorm's CUDA kernels and NCCL exchange (through its autograd function, world size 1) give
    plain BatchNorm's output, gradients and running statistics; the loop's conversion runs on the GPU."""
    from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction

    from pretrain.method.siamese import build_method

    torch.manual_seed(0)
    x = torch.randn(8, 16, 6, 6, device="cuda", requires_grad=True)
    bn = nn.BatchNorm2d(16).cuda()
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    y_ref = bn(x)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    y = SyncBNFunction.apply(x, bn.weight, bn.bias, stats[0], stats[1], bn.eps, bn.momentum,
                             nccl_group.group.WORLD, 1)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(stats[0], bn.running_mean)
    torch.testing.assert_close(stats[1], bn.running_var)

    model = nn.SyncBatchNorm.convert_sync_batchnorm(build_method(load_config(None, ["MODEL.PROJ_HIDDEN_DIM", "64",
                                                                                   "MODEL.PRED_HIDDEN_DIM", "64"])))
    model.cuda()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    v = torch.randn(4, 3, 32, 32, device="cuda")
    out = model(v, v.flip(-1))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


@pytest.mark.cuda
def test_cuda_nccl_collectives(nccl_group):
    dist = nccl_group
    t = torch.arange(4.0, device="cuda")
    dist.all_reduce(t)
    dist.broadcast(t, src=0)
    dist.barrier()
    assert dist.get_backend() == "nccl" and torch.equal(t.cpu(), torch.arange(4.0))


@pytest.mark.cuda
def test_cuda_loader_pins_memory(tiny_data, tmp_path):
    """train_epoch's DataLoader pins its batches on a GPU run (pin_memory=True), for non-blocking copies."""
    run = make_run(tiny_data, tmp_path, **{"TRAIN.DEVICE": "cuda", "TRAIN.MAX_STEPS": "2",
                                           "DATA.NUM_WORKERS": "1"})
    pinned: list[bool] = []
    real_step = run.step

    def step(v1, v2, *args, **kwargs):
        pinned.append(v1.is_pinned() and v2.is_pinned())
        return real_step(v1, v2, *args, **kwargs)

    run.step = step
    run.log = type("NullLog", (), {"write": lambda self, row: None})()
    run.progress.history.update(train_time_s=0.0, train_images=0)  # as run() sets them
    run.train_epoch(0)
    assert pinned == [True, True]


@pytest.mark.cuda
def test_cuda_jpeg_decode(tmp_path):
    """torchvision's GPU JPEG decoder (nvJPEG) gives the CPU decoder's pixels, one image or a batch."""
    import numpy as np
    from PIL import Image
    from torchvision.io import decode_jpeg, read_file

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        Image.fromarray(small).resize((224, 224), Image.BICUBIC).save(tmp_path / f"{i}.jpg", quality=90)
        paths.append(tmp_path / f"{i}.jpg")
    data = [read_file(str(p)) for p in paths]
    cpu = [decode_jpeg(d) for d in data]
    gpu = decode_jpeg(data, device="cuda")
    assert len(gpu) == 3
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda" and g.shape == c.shape == (3, 224, 224)
        assert (g.cpu().float() - c.float()).abs().mean() < 2.0  # IDCT rounding only
