"""Process-group facts shared by the training loops (pretraining, the torchvision detection engine).

One process unless launched by torchrun (WORLD_SIZE, RANK, LOCAL_RANK set): then the default
process group is created, NCCL on GPUs and gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rimifm.errors import UserError


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """auto (a GPU when one is visible, else the CPU), cpu or cuda; `option` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown {option} {name!r}; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{option} is {name} but no GPU is visible; use {option} cpu (or auto)")
    return torch.device(name)


class Distributed:
    """Process-group facts; a single process when not launched by torchrun."""

    def __init__(self, device_pref: str = "auto", key: str = "TRAIN.DEVICE"):
        """device_pref: auto, cpu, or cuda (cuda:N accepted; the GPU is LOCAL_RANK's); `key` names the
        config key that set it, for the error when no GPU is visible."""
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref.startswith("cuda")
        if use_cuda and not torch.cuda.is_available():
            raise UserError(f"{key} is {device_pref} but no GPU is visible; use {key} cpu")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def mean(self, value: torch.Tensor) -> float:
        v = value.detach().float().reshape(1).clone()
        if self.world > 1:
            dist.all_reduce(v)
            v /= self.world
        return float(v.item())

    def max(self, value: float) -> float:
        """The largest of every process's `value` (the value itself in one process)."""
        if self.world == 1:
            return float(value)
        v = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        return float(v.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
