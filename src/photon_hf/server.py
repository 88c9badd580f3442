"""`photon-hf serve`: transformers' own OpenAI-compatible server (`transformers serve`) with PHOTON loaded and
continuous batching on (`PhotonForCausalLM.init_continuous_batching`, `photon_hf.serving`).

`transformers serve MODEL` alone cannot load PHOTON yet: its loader resolves `getattr(transformers,
config.architectures[0])`, which no model outside transformers has (remote-code folders included).
`PhotonModelLoader` is transformers' loader with the upstream fix (fall back to `AutoModelForCausalLM`, which
knows PHOTON once `photon_hf` is imported, or through the folder's `auto_map` with `trust_remote_code`);
`docs/serving.md` gives it as a patch. The loader is a module-level class so that transformers 5.25, which loads
the model in a process of its own (started with `spawn`), unpickles it there by importing this module, which
imports `photon_hf` first.

Needs the `serving` extra (`pip install "photon-hf[serving]"`: fastapi, uvicorn, openai, pydantic).
"""

from __future__ import annotations

import os
import sys

import transformers
from transformers import AutoModelForCausalLM
from transformers.cli.serving import model_manager as _model_manager
from transformers.cli.serving import server as _server
from transformers.utils import is_kernels_available

import photon_hf  # noqa: F401  (registers PHOTON with the Auto classes, in every process that loads this module)

# transformers 5.25 names its loader ModelLoader; 5.17-5.24 load inside ModelManager.
_LOADER_NAME = "ModelLoader" if hasattr(_model_manager, "ModelLoader") else "ModelManager"
_StockLoader = getattr(_model_manager, _LOADER_NAME)
_stock_build_server = _server.build_server


class _ByAutoClass:
    """What the stock loader finds at `transformers.<architecture>`: loads through `AutoModelForCausalLM`."""

    @staticmethod
    def from_pretrained(*args, **kwargs):
        return AutoModelForCausalLM.from_pretrained(*args, **kwargs)


class PhotonModelLoader(_StockLoader):
    """transformers' model loader, able to load PHOTON, which hands the loaded model the pool's size
    (`continuous_batching_defaults`: `max_batch_size`, `max_cache_len`, `align_phases`)."""

    launch_defaults: dict = {}  # set by `serve` before the server starts; copied into each instance (pickled)

    def __init__(self, *args, **kwargs):
        self.photon_defaults = dict(type(self).launch_defaults)  # before the stock __init__, which may load
        super().__init__(*args, **kwargs)

    def _load_model(self, *args, **kwargs):
        for module in {id(m): m for m in (sys.modules["transformers"], transformers, _model_manager.transformers)
                       }.values():
            for name in ("PhotonForCausalLM", "PhotonModel"):
                if not hasattr(module, name):
                    setattr(module, name, _ByAutoClass)
        defaults = dict(self.photon_defaults)
        _log_to_stderr(defaults.pop("log_level", "warning"))
        model = super()._load_model(*args, **kwargs)
        if getattr(model.config, "model_type", None) == "photon":
            model.continuous_batching_defaults = defaults
        return model


def _log_to_stderr(level: str):
    """photon_hf's log lines (a cancelled request freeing its row, a failed request) at the server's level, in the
    process that runs the model."""
    import logging

    logger = logging.getLogger("photon_hf")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[photon_hf] %(message)s"))
        logger.addHandler(handler)


def _build_server(*args, **kwargs):
    """transformers' app, which also answers a request the batching manager refuses with a 4xx and one line (5.25
    does this itself for ValueErrors; 5.17-5.24 answer 500) and a full queue with 503."""
    from fastapi.responses import JSONResponse

    from .serving import QueueFullError, RequestError

    app = _stock_build_server(*args, **kwargs)
    app.add_exception_handler(RequestError, lambda request, error: JSONResponse({"detail": str(error)}, 400))
    app.add_exception_handler(QueueFullError, lambda request, error: JSONResponse({"detail": str(error)}, 503))
    return app


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 32,
    max_cache_len: int | None = None,
    align_phases: bool = True,
    compile: bool = False,
    device: str = "auto",
    dtype: str | None = "auto",
    trust_remote_code: bool = False,
    log_level: str = "warning",
    default_seed: int | None = None,
    enable_cors: bool = False,
    continuous_batching: bool = True,
):
    """Serve `model` (a folder from `save_pretrained` or `export_for_hub`, or a Hub name) with transformers' server
    and PHOTON's continuous batching, until interrupted. (`continuous_batching=False`: transformers' one request at
    a time, which the serving benchmark compares against.)"""
    from transformers.cli.serve import Serve

    PhotonModelLoader.launch_defaults = dict(
        max_batch_size=max_batch_size, max_cache_len=max_cache_len, align_phases=align_phases, log_level=log_level
    )
    setattr(_model_manager, _LOADER_NAME, PhotonModelLoader)  # what Serve builds its loader from
    _server.build_server = _build_server
    from huggingface_hub.constants import HF_HUB_CACHE

    os.makedirs(HF_HUB_CACHE, exist_ok=True)  # 5.17's /v1/models lists the Hub cache, and fails where it is missing
    if not is_kernels_available():  # 5.25 loads every model with hub kernels unless told not to; PHOTON has none
        os.environ.setdefault("USE_HUB_KERNELS", "0")
    Serve(
        force_model=model,
        continuous_batching=continuous_batching,
        compile=compile,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        host=host,
        port=port,
        log_level=log_level,
        default_seed=default_seed,
        enable_cors=enable_cors,
    )
