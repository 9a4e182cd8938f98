"""benchmarks/gpu_check.sh: the dry run on a machine without a GPU, as a user types it."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any(line.startswith("dry run: no GPU is present") for line in lines[:3]), lines[:3]
    table = r.stdout[r.stdout.rindex("check "):]
    rows = {line.split("  ")[0]: line for line in table.splitlines()[2:] if line.strip()}
    assert rows["tests marked cuda"].endswith("SKIP")
    throughput = [row for name, row in rows.items() if name.startswith("BYOL")]
    assert len(throughput) == 4 and all("img/s" in row and row.endswith("INFO") for row in throughput)
    assert rows["torchrun 2 proc (gloo), kill + resume"].endswith("PASS")
    assert "weights equal" in rows["torchrun 2 proc (gloo), kill + resume"]
    det = [row for name, row in rows.items() if name.startswith("detection torchvision")]
    assert len(det) == 1 and "s/iter" in det[0] and det[0].endswith("PASS")
    assert "all checks passed" in r.stdout


def test_gpu_check_without_a_gpu_and_without_dry_run_says_so():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300)
    assert r.returncode == 2 and "no GPU is present" in r.stdout and "--dry-run" in r.stdout
