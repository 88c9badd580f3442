"""The vLLM tests. They run in a virtual environment of their own, with vLLM's CPU build (`.ci/run` makes it;
docs/vllm.md): a missing vLLM is a collection error here, never a skip. The main suite does not collect this folder
(tests/conftest.py).

Engines run in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, so a test can look inside the model and the
scheduler) unless a test starts a server; every vLLM process talks over 127.0.0.1 (`VLLM_HOST_IP`)."""

import os

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import vllm  # noqa: E402,F401  (a collection error without vLLM)
