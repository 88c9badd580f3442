"""`photon-hf serve`: transformers' own OpenAI-compatible server (`transformers serve`) with PHOTON loaded,
continuous batching on (`PhotonForCausalLM.init_continuous_batching`, `photon_hf.serving`), and what an operator
expects around it (`docs/serving.md`):

- **Loading.** `transformers serve MODEL` alone cannot load PHOTON yet: its loader resolves `getattr(transformers,
  config.architectures[0])`, which no model outside transformers has (remote-code folders included).
  `PhotonModelLoader` is transformers' loader with the upstream fix (fall back to `AutoModelForCausalLM`, which
  knows PHOTON once `photon_hf` is imported, or through the folder's `auto_map` with `trust_remote_code`). It is a
  module-level class so that transformers 5.25, which loads the model in a process of its own (started with
  `spawn`), unpickles it there by importing this module, which imports `photon_hf` first.
- **Requests.** Each request's sampling is checked before anything runs, as OpenAI clients mean it
  (`request_sampling`: a 400 naming the field), and handed to the batching manager per request, which the stock
  bridges do not do: 5.25's runner, in the model's process, passes `temperature`, `top_k` and `top_p` only where the
  model's generation config samples, and seeds torch globally (`_PhotonRunner` replaces it); 5.17-5.24's, in this
  process, passes `max_new_tokens` and EOS only, and starts the manager with the first request's settings
  (`_PhotonCBGenerateManager` replaces it).
- **The gate** (`_Gate`): the API key on `/v1` (`--api-key`, `PHOTON_HF_API_KEY`), the routes that stop or swap
  the model (`/reset`, `/load_model`) off unless `--enable-admin-routes`, and the count of requests in flight.
  `/health` answers from the model's process (`model_problem`).
- **Start and stop.** The port is checked before the model loads (`photon_hf.cli.check_port`); SIGINT and SIGTERM
  stop admitting, let the requests in flight finish (at most `--shutdown-timeout` seconds; uvicorn's graceful
  shutdown), then `serve` returns with one line (`_Stop`). In 5.25 the model's process exits on SIGTERM only once
  its requests are done, so a signal sent to the whole process group (systemd, `kill -- -PGID`) does not cut them
  short.

Needs the `serving` extra (from a checkout: `pip install ".[serving]"`: fastapi, uvicorn, openai, pydantic).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import inspect
import json
import multiprocessing.util
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import transformers
import uvicorn
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from transformers import AutoModelForCausalLM
from transformers.cli.serving import model_manager as _model_manager
from transformers.cli.serving import server as _server
from transformers.cli.serving import utils as _serving_utils
from transformers.utils import is_kernels_available

import photon_hf  # noqa: F401  (registers PHOTON with the Auto classes, in every process that loads this module)

from .cli import API_KEY_ENV, check_port

# transformers 5.25 names its loader ModelLoader and runs the model in a process of its own; 5.17-5.24 load inside
# ModelManager, in the server's process.
_LOADER_NAME = "ModelLoader" if hasattr(_model_manager, "ModelLoader") else "ModelManager"
_StockLoader = getattr(_model_manager, _LOADER_NAME)
_IN_PROCESS = hasattr(_serving_utils, "CBGenerateManager")
_stock_build_server = _server.build_server

ADMIN_ROUTES = ("/reset", "/load_model")  # transformers' routes that stop the model or load another


@dataclass
class _ServeOptions:
    """What `serve` sets for the app (`_build_server`, `_Gate`) and the uvicorn server (`_DrainingServer`)."""

    api_key: str | None = None
    admin_routes: bool = False
    shutdown_timeout: float = 25.0


_options = _ServeOptions()


# ------------------------------------------------------------------------------------------------------- loading
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
        _patch_transformers()  # in 5.25's model process: its runner is ours
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


# ------------------------------------------------------------------------------------------------------ requests
def request_sampling(body: dict) -> dict:
    """The decoding settings a request names, checked, as OpenAI clients mean them: `temperature` > 0 samples (with
    the request's `top_k` and `top_p`) and 0 is greedy, whatever the model's generation config says; `top_p` in
    (0, 1]; `top_k` >= 0 (0: off; an extension, as vLLM's); `seed` an integer (the request's own random numbers).

    Returns those the request sets, as the batching manager takes them (`do_sample`, `temperature`, `top_k`,
    `top_p`, `seed`); the others come from the model's generation config, then `generate()`'s defaults. Raises
    `HTTPException(400)` naming the field for a value out of range, a token budget below 1, and what the pool
    cannot honour, rather than ignoring it: `n` or `best_of` other than 1, penalties, `logit_bias`, `stop` strings,
    and transformers' `generation_config` field.
    """
    settings = {}
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or temperature < 0:
            _refuse(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}.")
        settings.update(do_sample=temperature > 0, temperature=float(temperature))
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 < top_p <= 1:
            _refuse(f"top_p must be a number in (0, 1], got {top_p!r}.")
        settings["top_p"] = float(top_p)
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_integer(top_k) or top_k < 0:
            _refuse(f"top_k must be an integer >= 0 (0: off), got {top_k!r}.")
        settings["top_k"] = top_k
    seed = body.get("seed")
    if seed is not None:
        if not _is_integer(seed) or not -(2**63) <= seed < 2**64:
            _refuse(f"seed must be an integer (64 bits), got {seed!r}.")
        settings["seed"] = seed
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if value is not None and (not _is_integer(value) or value < 1):
            _refuse(f"{name} must be an integer >= 1, got {value!r}.")
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and value != 1:
            _refuse(f"{name}={value!r} is not supported: photon-hf serve answers one choice a request. Send {name} "
                    "requests instead (with different seeds for different samples).")
    for name in ("frequency_penalty", "presence_penalty", "logit_bias", "stop", "generation_config"):
        value = body.get(name)
        if value not in (None, 0, 0.0, [], {}, ""):
            _refuse(f"{name} is not supported by PHOTON's continuous batching, which decodes greedily or samples "
                    "with temperature, top_k, top_p and seed, and ends an answer at EOS or max_tokens.")
    return settings


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(message: str):
    raise HTTPException(status_code=400, detail=message)


_pending: dict[str, dict] = {}  # 5.17-5.24: each request's settings, from its handler to the manager, by request id


@contextmanager
def _handed_over(body: dict, request_id: str, settings: dict):
    """Carries a request's checked `settings` to the batching manager through transformers' handler: 5.25 sends the
    request's generation kwargs to the model's process, so they go in the body's `generation_config` (transformers'
    own field for generation settings; the seed goes as `seed`, as it came); 5.17-5.24 call `add_request` in this
    process with the request's id, so they wait in `_pending` under that id."""
    body.pop("top_k", None)  # not a field transformers' handlers accept
    if not _IN_PROCESS:
        sampling = {name: value for name, value in settings.items() if name != "seed"}
        if sampling:
            body["generation_config"] = json.dumps(sampling)
        yield
        return
    _pending[request_id] = settings
    try:
        yield
    finally:
        _pending.pop(request_id, None)


def _check_requests(handler):
    """Make `handler` (a transformers endpoint handler) check each request's sampling first and hand it over."""
    handle_request = handler.handle_request

    async def checked(body: dict, request_id: str):
        settings = request_sampling(body)
        with _handed_over(body, request_id, settings):
            return await handle_request(body, request_id)

    handler.handle_request = checked


if _IN_PROCESS:

    class _PhotonCBGenerateManager(_serving_utils.CBGenerateManager):
        """transformers 5.17-5.24's bridge to the batching manager, in the server's process: starts PHOTON's manager
        with the model's generation config (the stock bridge uses the first request's), and gives each request the
        settings its handler checked (`_pending`; the stock bridge passes `max_new_tokens` and EOS only)."""

        def init_cb(self, model, gen_config):
            if self._cb is not None:
                return
            super().init_cb(model, model.generation_config)
            add_request = self._cb.add_request

            def add_request_with_settings(input_ids, request_id=None, **kwargs):
                return add_request(input_ids, request_id=request_id, **kwargs, **_pending.get(request_id, {}))

            self._cb.add_request = add_request_with_settings

else:

    class _PhotonRunner(_serving_utils.CBGenerateRunner):
        """transformers 5.25's continuous-batching runner, in the model's process, which gives PHOTON's manager each
        request's `do_sample`, `temperature`, `top_k`, `top_p` and `seed` (the stock runner passes the sampling
        settings only where they sample, and seeds torch globally, which a batch shares), and which lets the
        requests in flight finish on SIGTERM (`_exit_when_idle`)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._exiting = False
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._exit_when_idle)

        def generate(self, request_id: int, inputs: dict, generation_kwargs: dict, stream: bool) -> None:
            if self._fail_if_worker_died(request_id):
                return
            settings = {name: generation_kwargs.get(name) for name in ("temperature", "top_k", "top_p", "seed")}
            with self.lock:
                self.active_requests[request_id] = [stream, 0]
            try:
                self.manager.add_request(
                    inputs["input_ids"], request_id=str(request_id), streaming=stream,
                    max_new_tokens=generation_kwargs["max_new_tokens"], eos_token_id=generation_kwargs["eos_token_id"],
                    do_sample=bool(generation_kwargs.get("do_sample")), **settings,
                )
            except Exception:
                with self.lock:
                    self.active_requests.pop(request_id, None)
                raise
            self.count_tokens(prompt=_serving_utils.prompt_length(inputs))

        def _exit_when_idle(self, signum, frame):
            """SIGTERM: exit (0) once no request is in flight. The server sends it after its own drain, so then at
            once; a SIGTERM sent to the whole process group (systemd, `kill -- -PGID`; Ctrl+C's SIGINT this process
            ignores) leaves the requests the server is draining to finish first. The exit is a multiprocessing
            child's (its finalizers: the queues flushed, its semaphores released) without the interpreter's teardown,
            which with transformers' frozen heap takes seconds and reports objects it could not free."""
            if not self.active_requests:
                multiprocessing.util._exit_function()
                os._exit(0)
            if not self._exiting:
                self._exiting = True
                threading.Thread(target=self._signal_once_idle, name="exit-when-idle", daemon=True).start()

        def _signal_once_idle(self):
            while self.active_requests:
                time.sleep(0.05)
            time.sleep(1.0)  # the last results on their way to the server (sent just after they leave the dict)
            self._exiting = False
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # interrupts its wait for requests


# ------------------------------------------------------------------------------------------------------ the app
class _Traffic:
    """The requests through the gate: in flight now, and those cut off (cancelled) since the stop began."""

    def __init__(self):
        self.in_flight = 0
        self.cut_off = 0
        self.stop_signal: int | None = None
        self.stopped_at = 0.0
        self.in_flight_at_stop = 0

    def stopping(self, signum: int):
        self.stop_signal, self.stopped_at, self.in_flight_at_stop = signum, time.monotonic(), self.in_flight
        self.cut_off = 0


_traffic = _Traffic()


class _Gate:
    """What every HTTP request passes first: the API key (on `/v1` and the admin routes; an OPTIONS preflight
    passes), the admin routes (off unless `--enable-admin-routes`), and the count of requests in flight."""

    def __init__(self, app, options: _ServeOptions):
        self.app, self.options = app, options
        self.authorization = None if options.api_key is None else f"Bearer {options.api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/") or "/"
        admin = path in ADMIN_ROUTES
        if self.authorization is not None and (admin or path.startswith("/v1")) and scope["method"] != "OPTIONS":
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self.authorization):
                detail = "Missing or wrong API key: send the header `Authorization: Bearer <key>`."
                response = JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        if admin and not self.options.admin_routes:
            detail = (f"{path} is off: it stops or replaces the model. Start photon-hf serve with "
                      "--enable-admin-routes to allow it.")
            return await JSONResponse({"detail": detail}, 403)(scope, receive, send)
        _traffic.in_flight += 1
        started = answered = False

        def leave():
            nonlocal answered
            if not answered:
                answered = True
                _traffic.in_flight -= 1

        async def send_and_count(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                leave()  # the whole answer goes out now (the handler may return a little later)
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        except asyncio.CancelledError:
            if _traffic.stop_signal is None or answered:
                raise
            # Cut off at --shutdown-timeout: a 503, or a stream's error event, rather than the traceback and the 500
            # (or the unfinished stream) uvicorn gives a cancelled request.
            _traffic.cut_off += 1
            task = asyncio.current_task()
            if hasattr(task, "uncancel"):  # Python 3.11+
                task.uncancel()
            detail = ("The server stopped before this request finished (--shutdown-timeout "
                      f"{self.options.shutdown_timeout:g} s).")
            if not started:
                await JSONResponse({"detail": detail}, 503)(scope, receive, send)
            else:  # an event stream: its last event says why it ends
                event = f"data: {json.dumps({'error': detail})}\n\n"
                await send({"type": "http.response.body", "body": event.encode()})
        finally:
            leave()


def model_problem(model_manager, generation_state=None) -> str | None:
    """Why the served model cannot answer now, or None when it can: in 5.25, its process stopped (`/reset`; the
    next request starts it again), exited or died; in 5.17-5.24, it is not loaded or its batching worker died."""
    engines = getattr(model_manager, "engines", None)
    if engines is not None:
        if not engines:
            return "no model is loaded"
        for engine in list(engines.values()):
            process = engine.managed_process
            if engine.is_dead:
                return f"the model's process died: {engine.fatal_error}"
            if not engine.process_running:
                return "the model's process is stopped (the next request starts it)"
            if process is not None and not process.is_alive():
                return f"the model's process exited (exit code {process.exitcode})"
        return None
    if not model_manager.loaded_models:
        return "no model is loaded (the next request loads it)"
    if generation_state is not None and not generation_state.is_cb_alive():
        return "the continuous batching worker died"
    return None


def _build_server(*args, **kwargs):
    """transformers' app, with the checks on requests (`_check_requests`), a request the batching manager refuses
    answered with a 4xx and one line (5.25 does this itself for ValueErrors; 5.17-5.24 answer 500) and a full queue
    with 503, `/health` from the model's process, and the gate in front (`_Gate`)."""
    from .serving import QueueFullError, RequestError

    arguments = inspect.signature(_stock_build_server).bind(*args, **kwargs).arguments
    for name in ("chat_handler", "completion_handler", "response_handler"):
        if arguments.get(name) is not None:
            _check_requests(arguments[name])
    app = _stock_build_server(*args, **kwargs)
    app.add_exception_handler(RequestError, lambda request, error: JSONResponse({"detail": str(error)}, 400))
    app.add_exception_handler(QueueFullError, lambda request, error: JSONResponse({"detail": str(error)}, 503))
    model_manager, generation_state = arguments["model_manager"], arguments.get("generation_state")
    app.router.routes = [route for route in app.router.routes if getattr(route, "path", None) != "/health"]

    @app.get("/health")
    def health():
        problem = model_problem(model_manager, generation_state)
        if problem is not None:
            return JSONResponse({"status": "unavailable", "reason": problem}, 503)
        return JSONResponse({"status": "ok"})

    app.add_middleware(_Gate, options=_options)
    return app


# ------------------------------------------------------------------------------------------------ start and stop
class _Stop(BaseException):
    """SIGINT or SIGTERM, raised where the server's main thread is: while the model loads, or once uvicorn has
    drained (uvicorn re-raises the signals it caught). A BaseException, so that no `except Exception` swallows it."""


def _raise_stop(signum, frame):
    raise _Stop(signum)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, whose graceful shutdown waits at most `--shutdown-timeout` seconds for the requests in
    flight, and which notes when the stop began and how many were in flight."""

    def __init__(self, config):
        config.timeout_graceful_shutdown = _options.shutdown_timeout
        super().__init__(config)

    def handle_exit(self, sig, frame):
        if not self.should_exit:
            _traffic.stopping(sig)
        super().handle_exit(sig, frame)


def _patch_transformers():
    """Point transformers' server at PHOTON's loader, app and per-request bridge (idempotent)."""
    setattr(_model_manager, _LOADER_NAME, PhotonModelLoader)  # what Serve builds its loader from
    _server.build_server = _build_server
    if _IN_PROCESS:
        _serving_utils.CBGenerateManager = _PhotonCBGenerateManager  # what GenerationState builds
    else:
        _model_manager.CBGenerateRunner = _PhotonRunner  # what the model's process builds


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
    api_key: str | None = None,
    admin_routes: bool = False,
    shutdown_timeout: float = 25.0,
):
    """Serve `model` (a folder from `save_pretrained` or `export_for_hub`, or a Hub name) with transformers' server
    and PHOTON's continuous batching until SIGINT or SIGTERM, then drain and return. (`continuous_batching=False`:
    transformers' one request at a time, which the serving benchmark compares against.)

    `api_key`: every `/v1` route answers 401 without `Authorization: Bearer <api_key>` (None: `PHOTON_HF_API_KEY`
    if set, else no key). `admin_routes`: allow `/reset` and `/load_model`. `shutdown_timeout`: seconds the requests
    in flight get to finish after a stop signal. Raises OSError before loading anything when the port is taken.
    """
    from transformers.cli.serve import Serve

    check_port(host, port)
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    _options.api_key, _options.admin_routes, _options.shutdown_timeout = api_key, admin_routes, shutdown_timeout
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"photon-hf serve: warning: listening on {host} without an API key: whoever reaches the port can use "
              f"the model (--api-key or {API_KEY_ENV})", file=sys.stderr, flush=True)
    PhotonModelLoader.launch_defaults = dict(
        max_batch_size=max_batch_size, max_cache_len=max_cache_len, align_phases=align_phases, log_level=log_level
    )
    _patch_transformers()
    from huggingface_hub.constants import HF_HUB_CACHE

    os.makedirs(HF_HUB_CACHE, exist_ok=True)  # 5.17's /v1/models lists the Hub cache, and fails where it is missing
    if not is_kernels_available():  # 5.25 loads every model with hub kernels unless told not to; PHOTON has none
        os.environ.setdefault("USE_HUB_KERNELS", "0")
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    stock_server, uvicorn.Server = uvicorn.Server, _DrainingServer  # what Serve builds its uvicorn server from
    try:
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
    except _Stop as stop:
        gc.unfreeze()  # what Serve does after a server that returns (transformers froze the objects it held)
        print(f"photon-hf serve: {_stop_line(stop.args[0])}", file=sys.stderr, flush=True)
    finally:
        uvicorn.Server = stock_server
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _stop_line(signum: int) -> str:
    name = signal.Signals(signum).name
    if _traffic.stop_signal is None:
        return f"stopped on {name} before serving."
    seconds = time.monotonic() - _traffic.stopped_at
    finished = _traffic.in_flight_at_stop - _traffic.cut_off
    line = f"stopped on {signal.Signals(_traffic.stop_signal).name}: {finished} request(s) in flight finished"
    if _traffic.cut_off:
        line += f", {_traffic.cut_off} cut off at --shutdown-timeout {_options.shutdown_timeout:g} s"
    return f"{line} ({seconds:.1f} s)."
