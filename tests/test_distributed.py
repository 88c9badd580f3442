"""Data-parallel training in two CPU processes (gloo) under torchrun: the stock Trainer (DDP) and FSDP2 with
the auto-wrap policy accelerate derives from `_no_split_modules`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("distributed_train.py")


def _run(command, timeout=300):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    output = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"exit {result.returncode}\n{output}"


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*launcher, str(SCRIPT), str(tmp_path)])
    _run([sys.executable, str(SCRIPT), str(tmp_path)])
    rank0 = torch.load(tmp_path / "trainer-rank0-of-2.pt")
    rank1 = torch.load(tmp_path / "trainer-rank1-of-2.pt")
    single = torch.load(tmp_path / "trainer-rank0-of-1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps the replicas identical
        # 2 processes x 2 blocks == 1 process x 4 blocks, with uneven label counts (num_items_in_batch is
        # gathered across processes).
        torch.testing.assert_close(rank0[key], single[key], rtol=0, atol=1e-6, msg=key)

    for rank in (0, 1):
        report = json.loads((tmp_path / f"fsdp-rank{rank}.json").read_text())
        # One FSDP unit per PhotonBlock (4 stacks x 1 layer in the tiny model), nothing else split off.
        assert report["units"] == 4 and all("PhotonBlock" in name for name in report["wrapped"]), report
        assert report["max_difference"] < 1e-6, report
