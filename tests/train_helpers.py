"""Shared helpers for the training, PEFT, Hub and CLI tests (tiny models, isolated subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

import photon_hf
from photon_hf.data import byte_tokenizer
from photon_hf.training import model_config

# Prepended to scripts that must run where photon_hf cannot be imported (as on a machine that only has
# transformers): any import of photon_hf or photon_kernels fails, whatever way the package is installed.
BLOCK_PHOTON = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockPhoton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("photon_hf", "photon_kernels"):
                raise ImportError(f"{name} is not installed in this process")
            return None

    sys.meta_path.insert(0, _BlockPhoton())
    """
)


def tiny_config(**overrides):
    """A hidden-64, one-layer-per-stack PHOTON (L=2, C=(4,4)) with the byte tokenizer's vocabulary."""
    return model_config("tiny", byte_tokenizer(), **overrides)


def tiny_model(seed: int = 0, **overrides) -> photon_hf.PhotonForCausalLM:
    torch.manual_seed(seed)
    return photon_hf.PhotonForCausalLM(tiny_config(**overrides)).eval()


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def run_python(code: str, *args: str, cwd=None, env: dict | None = None, timeout: int = 300, isolated: bool = False):
    """Run `code` in a fresh interpreter (`-I`: no user site, no PYTHON* variables when `isolated`); returns the
    completed process and fails with its output when the exit code is not 0."""
    full_env = {**os.environ, **(env or {})}
    command = [sys.executable, *(["-I"] if isolated else []), "-c", code, *args]
    result = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result
