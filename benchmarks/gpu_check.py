"""One short check of every GPU path, ending in one table: bash benchmarks/gpu_check.sh [--dry-run] [options].

On a GPU (sized to take at most 8 minutes on one; not run on a GPU yet):
  1. the tests marked `cuda` (python -m pytest -m cuda tests/);
  2. pretraining throughput, ResNet-50 at 224 px, bf16 and channels_last, BYOL base / +RIM / +IFM / +RIM+IFM:
     images/s of the model step alone (PretrainRun.step on synthetic tensors already on the device), images/s
     of the loop with its DataLoader (PretrainRun.train_epoch; DATA.VIEWS device when the config has that key,
     else the CPU views) on synthetic 224 px JPEGs with N workers, and their ratio (target >= 90%);
  3. a torchrun pretraining of 60 steps (one process per GPU, up to 2; TRAIN.DETERMINISTIC true), SIGKILLed
     once it has saved a checkpoint and started again: its final weights must equal an uninterrupted run's;
  4. both detection engines (detectron2 only when it imports), 20 iterations each on the GPU: s/iter and peak
     memory (benchmarks/detection_speed.py on detection/configs/synthetic_r18_c4.yaml).
--dry-run runs on the CPU whatever a CPU can run, at a small size (ResNet-18, 32 px, a few steps; kill and resume
with 2 gloo processes; the torchvision engine for 2 iterations), in about 1-3 minutes, and exits 0 when it all
works. One image in images/s is one pair of views.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pretrain.config import get_default_config, load_config
from pretrain.training.loop import PretrainRun
from rimifm.distributed import Distributed
from rimifm.errors import UserError

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"base": (False, False), "+RIM": (True, False), "+IFM": (False, True), "+RIM+IFM": (True, True)}
RATIO_TARGET = 0.90


@dataclass
class Sizes:
    device: str
    backbone: str
    image: int
    batch: int
    warmup: int  # steps left out of each timing
    steps: int  # timed steps of the model step alone
    images: int  # synthetic JPEGs: one loader epoch is images // batch steps
    heads: int  # projector/predictor hidden width
    resume_image: int
    resume_batch: int
    resume_epochs: int
    resume_ckpt_every: int
    resume_nproc: int
    det_iters: int
    det_images: int
    det_engines: tuple[str, ...]
    det_overrides: tuple[str, ...]  # besides MODEL.DEVICE
    cuda_tests: str  # where pytest looks for the tests marked cuda ("" = not run)


def gpu_sizes(args) -> Sizes:
    from detection.engines import detectron2_available

    engines = ("detectron2", "torchvision") if detectron2_available() else ("torchvision",)
    return Sizes("cuda", "resnet50", 224, args.batch or 128, 5, 20, args.images or 3840, 4096, 64, 64, 1, 4,
                 min(2, torch.cuda.device_count()), 20, 96, engines, (), "tests")


def dry_sizes(args) -> Sizes:
    det_small = ("SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "107",
                 "DATALOADER.NUM_WORKERS", "0")
    return Sizes("cpu", "resnet18", 32, args.batch or 8, 1, 2, args.images or 32, 64, 32, 8, 2, 1, 2, 2, 8,
                 ("torchvision",), det_small, "")


@dataclass
class Row:
    check: str
    figure: str
    target: str
    result: str  # PASS, FAIL, SKIP or INFO


# ------------------------------------------------------------------ data

def make_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """`count` size x size JPEGs: smooth random colour fields plus texture, so that decoding is not trivial."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        a = np.asarray(coarse, dtype=np.int16) + rng.integers(-24, 25, (size, size, 3), dtype=np.int16)
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def views_overrides(mode: str) -> tuple[list[str], str]:
    """DATA.VIEWS device when the config has that key (and `mode` allows it), else the CPU views."""
    has_key = "VIEWS" in get_default_config().DATA
    if mode == "device" and not has_key:
        raise UserError("--views device: this checkout's pretrain/config.py has no DATA.VIEWS key")
    if has_key and mode in ("auto", "device"):
        return ["DATA.VIEWS", "device"], "device views"
    return [], "cpu views"


# ------------------------------------------------------------------ checks

def cuda_tests(sizes: Sizes) -> Row:
    if not sizes.cuda_tests:
        return Row("tests marked cuda", "not run (no GPU)", "all pass", "SKIP")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", sizes.cuda_tests]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    return Row("tests marked cuda", tail.strip("= "), "all pass", "PASS" if ok else "FAIL")


class _NullLog:
    def write(self, row: dict) -> None:
        pass


def _throughput_run(args, sizes: Sizes, root: Path, out: Path, rim: bool, ifm: bool, views: list[str]) -> PretrainRun:
    overrides = ["METHOD", "byol", "MODEL.BACKBONE", sizes.backbone, "DATA.DATASET", "imagefolder",
                 "DATA.ROOT", str(root), "DATA.IMAGE_SIZE", str(sizes.image), "DATA.BATCH_SIZE", str(sizes.batch),
                 "DATA.NUM_WORKERS", str(args.workers), "RIM.ENABLED", str(rim), "RIM.PROB", "1.0",
                 "IFM.ENABLED", str(ifm), "MODEL.PROJ_HIDDEN_DIM", str(sizes.heads),
                 "MODEL.PRED_HIDDEN_DIM", str(sizes.heads), "TRAIN.DEVICE", sizes.device, "TRAIN.EPOCHS", "100",
                 "TRAIN.PRECISION", "auto", "TRAIN.CHANNELS_LAST", "true", "TRAIN.KNN_PERIOD", "0",
                 "TRAIN.PROGRESS", "false", "TRAIN.TENSORBOARD", "false", "TRAIN.LOG_PERIOD", "1000",
                 "OUTPUT_DIR", str(out), *views]
    cfg = load_config(None, overrides)
    return PretrainRun(cfg, "", Distributed(cfg.TRAIN.DEVICE))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _FinishedViews:
    """Stands in for the dataset in step(), which asks it to finish a batch on the device (DATA.VIEWS device:
    the colour ops); the step-alone views are finished tensors on the device already."""

    @staticmethod
    def to_device(views: torch.Tensor, device: torch.device) -> torch.Tensor:
        return views.to(device)


def step_alone(run: PretrainRun, sizes: Sizes) -> float:
    """Images/s of PretrainRun.step on random view tensors already on the device."""
    shape = (run.per_rank, 3, sizes.image, sizes.image)
    v1, v2 = torch.randn(shape, device=run.device), torch.randn(shape, device=run.device)
    dataset, run.dataset = run.dataset, _FinishedViews()
    try:
        for _ in range(sizes.warmup):
            run.step(v1, v2, 0)
        _sync(run.device)
        t0 = time.perf_counter()
        for _ in range(sizes.steps):
            run.step(v1, v2, 0)
        _sync(run.device)
    finally:
        run.dataset = dataset
    return run.global_batch * sizes.steps / (time.perf_counter() - t0)


def with_loader(run: PretrainRun, sizes: Sizes) -> float:
    """Images/s of one epoch of PretrainRun.train_epoch (its DataLoader and views), first steps left out."""
    times: list[float] = []
    real_step = run.step

    def timed_step(*a, **k):
        result = real_step(*a, **k)
        _sync(run.device)
        times.append(time.perf_counter())
        return result

    run.step = timed_step
    run.progress.step = 0
    run.progress.history.update(train_time_s=0.0, train_images=0)
    run.log = _NullLog()
    run.train_epoch(0)
    run.step = real_step
    timed = len(times) - 1 - sizes.warmup
    if timed < 1:
        raise UserError(f"{len(times)} loader steps are too few to time; raise --images")
    return run.global_batch * timed / (times[-1] - times[sizes.warmup])


def throughput(args, sizes: Sizes, root: Path, tmp: Path, dry: bool) -> list[Row]:
    views, views_name = views_overrides(args.views)
    rows = []
    for name, (rim, ifm) in VARIANTS.items():
        label = f"BYOL{name if name != 'base' else ''} {sizes.backbone} {sizes.image}px b{sizes.batch}"
        try:
            run = _throughput_run(args, sizes, root, tmp / f"tp{name}", rim, ifm, views)
            alone = step_alone(run, sizes)
            loaded = with_loader(run, sizes)
        except Exception as exc:  # one failed variant is a FAIL row, not the end of the check
            rows.append(Row(label, f"error: {str(exc).splitlines()[0][:90]}", "", "FAIL"))
            continue
        finally:
            run = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        ratio = loaded / alone
        verdict = "INFO" if dry else ("PASS" if ratio >= RATIO_TARGET else "FAIL")
        rows.append(Row(label, f"step {alone:.1f}, loader {loaded:.1f} img/s ({args.workers} workers, {views_name}): "
                               f"{100 * ratio:.0f}%", f">= {100 * RATIO_TARGET:.0f}%", verdict))
        print(f"  {label}: {rows[-1].figure}", flush=True)
    return rows


def _pretrain_cmd(sizes: Sizes, root: Path, out: Path, ckpt_every: int) -> list[str]:
    small = ["MODEL.PROJ_HIDDEN_DIM", str(sizes.heads), "MODEL.PROJ_OUTPUT_DIM", "32",
             "MODEL.PRED_HIDDEN_DIM", str(sizes.heads)] if sizes.device == "cpu" else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(sizes.resume_nproc),
            str(REPO / "tools" / "pretrain.py"), "DATA.DATASET", "imagefolder", "DATA.ROOT", str(root),
            "DATA.IMAGE_SIZE", str(sizes.resume_image), "DATA.BATCH_SIZE", str(sizes.resume_batch),
            "DATA.NUM_WORKERS", "2" if sizes.device == "cpu" else "6", "RIM.ENABLED", "true", "RIM.FILL", "noise", "IFM.ENABLED", "true",
            "TRAIN.EPOCHS", str(sizes.resume_epochs), "TRAIN.DEVICE", sizes.device, "TRAIN.DETERMINISTIC", "true",
            "TRAIN.CHECKPOINT_PERIOD_STEPS", str(ckpt_every), "TRAIN.KNN_PERIOD", "0", "TRAIN.PROGRESS", "false",
            "TRAIN.TENSORBOARD", "false", "TRAIN.LOG_PERIOD", "5", "OUTPUT_DIR", str(out), *small]


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A launcher in a session of its own, so that a SIGKILL can take it and its workers at once."""
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    """Wait for a run; its output, or a UserError with its last line."""
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise UserError(f"no end after 600 s (see {log})") from None
    text = log.read_text()
    if proc.returncode != 0:
        raise UserError(f"exit {proc.returncode}: {(text.strip().splitlines() or [''])[-1][:150]} (see {log})")
    return text


def kill_and_resume(sizes: Sizes, root: Path, tmp: Path) -> Row:
    """An uninterrupted run, and beside it one SIGKILLed (launcher and workers) once it has saved, then
    restarted: the final weights must be equal."""
    nproc = sizes.resume_nproc
    group = "no process group" if nproc == 1 else "NCCL" if sizes.device == "cuda" else "gloo"
    label = f"torchrun {nproc} proc ({group}), kill + resume"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    ref, killed = tmp / "resume_ref", tmp / "resume_killed"
    last = killed / "checkpoints" / "last.pth"
    ref_proc = _start(_pretrain_cmd(sizes, root, ref, 0), env, tmp / "resume_ref.log")
    try:
        proc = _start(_pretrain_cmd(sizes, root, killed, sizes.resume_ckpt_every), env, tmp / "resume_killed.log")
        deadline = time.time() + 300
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.3))  # an arbitrary point, possibly mid-write of a checkpoint
        if proc.poll() is not None:
            raise UserError(f"the run ended (exit {proc.returncode}) before it could be killed "
                            f"(see {tmp / 'resume_killed.log'})")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = torch.load(last, map_location="cpu", weights_only=True)["step"]
        again = _start(_pretrain_cmd(sizes, root, killed, sizes.resume_ckpt_every), env, tmp / "resume_again.log")
        if "resumed from" not in _finish(again, tmp / "resume_again.log"):
            raise UserError("the restarted run did not resume")
        _finish(ref_proc, tmp / "resume_ref.log")
        a = torch.load(ref / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
        b = torch.load(last, map_location="cpu", weights_only=True)
    except (UserError, OSError, KeyError, RuntimeError) as exc:
        return Row(label, f"error: {str(exc)[:150]}", "equal weights", "FAIL")
    finally:
        if ref_proc.poll() is None:
            os.killpg(ref_proc.pid, signal.SIGKILL)
            ref_proc.wait()
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    figure = (f"killed at step {killed_at}/{a['step']}, resumed: "
              + ("weights equal" if not differ else f"{len(differ)}/{len(a['model'])} tensors differ"))
    ok = not differ and a["step"] == b["step"] and killed_at < a["step"]
    return Row(label, figure, "equal weights", "PASS" if ok else "FAIL")


def detection(sizes: Sizes, tmp: Path) -> list[Row]:
    from detection_speed import measure

    from synthetic.generator import generate

    root = generate(tmp / "synthetic", seed=0, pretrain_images=1, cls_train_per_class=1, cls_val_per_class=1,
                    det_trainval=sizes.det_images, det_test=4, det_image_size=128)
    os.environ["RIMIFM_SYNTHETIC"] = str(root)
    rows = []
    for engine in sizes.det_engines:
        label = f"detection {engine}, synthetic_r18_c4, {sizes.det_iters} iters on {sizes.device}"
        rec = measure(engine, "synthetic_r18_c4.yaml", sizes.det_iters, ["MODEL.DEVICE", sizes.device, *sizes.det_overrides],
                      tmp / f"det_{engine}")
        if "error" in rec:
            rows.append(Row(label, f"error: {rec['error'][:150]}", "runs", "FAIL"))
            continue
        spi = rec.get("sec_per_iter")
        ok = spi is not None and np.isfinite(spi) and spi > 0
        rows.append(Row(label, f"{spi:.3f} s/iter, peak {rec['peak_memory_mb']:.0f} MiB" if ok else f"s/iter {spi}",
                        "runs", "PASS" if ok else "FAIL"))
    return rows


# ------------------------------------------------------------------ main

def print_table(rows: list[Row]) -> None:
    heads = ("check", "figure", "target", "result")
    cells = [heads] + [(r.check, r.figure, r.target, r.result) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    line = lambda c: "  ".join(str(x).ljust(w) for x, w in zip(c, widths)).rstrip()  # noqa: E731
    print("\n" + line(heads))
    print("  ".join("-" * w for w in widths))
    for c in cells[1:]:
        print(line(c))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the CPU-runnable parts at a small size, on the CPU")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the CPUs, at most 16; "
                   "dry run: 2)")
    p.add_argument("--batch", type=int, default=None, help="pretraining batch of the throughput check (128; dry 8)")
    p.add_argument("--images", type=int, default=None, help="synthetic JPEGs for the loader (3840; dry run 32)")
    p.add_argument("--views", choices=["auto", "cpu", "device"], default="auto",
                   help="auto: DATA.VIEWS device when the config has the key, else the CPU views")
    p.add_argument("--skip", nargs="*", default=[], choices=["tests", "throughput", "resume", "detection"])
    args = p.parse_args(argv)
    has_gpu = torch.cuda.is_available()
    if not has_gpu and not args.dry_run:
        print("no GPU is present: nothing to check here (--dry-run runs the CPU-runnable parts at a small size)")
        return 2
    if args.dry_run:
        print("dry run: " + ("a GPU is present but left unused; " if has_gpu else "no GPU is present; ")
              + "the CPU-runnable parts at a small size, on the CPU", flush=True)
    sizes = dry_sizes(args) if args.dry_run else gpu_sizes(args)
    if sizes.device == "cpu":  # one thread per process: two threads on a busy 2-core machine thrash (10x slower)
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.workers = args.workers if args.workers is not None else (2 if args.dry_run else min(16, cpus))
    name = torch.cuda.get_device_name(0) if sizes.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {cpus} CPUs, {args.workers} loader workers", flush=True)
    start = time.perf_counter()
    rows: list[Row] = []

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f} s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        if "tests" not in args.skip:
            rows.append(cuda_tests(sizes))
            say(f"tests: {rows[-1].figure}")
        root = make_jpegs(tmp / "jpegs", sizes.images, sizes.image)
        say(f"{sizes.images} synthetic {sizes.image} px JPEGs made")
        def logged(name: str, job):
            def run_job() -> list[Row]:
                result = job()
                say(f"{name}: " + "; ".join(r.figure for r in result))
                return result
            return run_job

        jobs = {"resume": lambda: [kill_and_resume(sizes, root, tmp)], "detection": lambda: detection(sizes, tmp)}
        jobs = {name: logged(name, job) for name, job in jobs.items() if name not in args.skip}
        # Dry run: the checks that run in processes of their own go alongside the in-process throughput check
        # (its figures are information only there), which halves the wall time on a small shared machine.
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(job) for name, job in jobs.items()} if args.dry_run else {}
            if "throughput" not in args.skip:
                rows += throughput(args, sizes, root, tmp, args.dry_run)
                say("throughput done")
            for name, job in jobs.items():
                rows += futures[name].result() if name in futures else job()
    rows.append(Row("wall time", f"{time.perf_counter() - start:.0f} s", "<= 480 s" if not args.dry_run else "",
                    "INFO"))
    print_table(rows)
    failed = [r for r in rows if r.result == "FAIL"]
    print(f"\n{len(failed)} of {len(rows)} checks failed" if failed else "\nall checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
