"""Continuous batching for PHOTON: many requests in one decode batch, joining and leaving as they come and go.

transformers' own continuous batching (`generate_batch`, `transformers serve --continuous-batching`) runs a
`ContinuousBatchingManager` over a paged per-token KV cache, which PHOTON does not have. `PhotonForCausalLM`
overrides `init_continuous_batching` to return a `PhotonBatchingManager` instead, with the same surface, so those
entry points run PHOTON unchanged.

The manager owns one static `PhotonCache`: a pool of `max_batch_size` rows of `max_cache_len` columns, allocated
once. A request is prefilled alone and written into a free row (`PhotonCache.write_row`: every tensor keeps its
address, so a compiled decode step stays valid); then all rows advance together, one `decode_column` per
iteration, through the same compiled graphs as `generate()`. A finished, failed or cancelled request frees its row
at once; requests wait in a queue while every row is held.

Phase alignment: a decode column runs every level that *some* row completes, so rows at different phases of the
P_L-token meta-chunk make every step run every level. With `align_phases` (the default) a request joins at the
pool's phase: its prompt is prefilled up to the longest prefix with that phase, and its last (< P_L) prompt tokens
are fed through the shared steps, forced, before sampling starts. The steps then are those of a single row: the
upper levels run on 1/C_1, 1/P_2, ... of the steps (`docs/serving.md` measures aligned against mixed phases).

Exactness: a row's state depends on its own tokens only, so a request's tokens equal `generate()` run alone with
the same settings (greedy; sampled with a per-request `seed`, which `torch.manual_seed(seed)` before `generate()`
reproduces).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import CompileConfig, GenerationConfig
from transformers.generation.continuous_batching.requests import GenerationOutput, RequestStatus
from transformers.utils import logging

from .attention_photon import REFERENCE_OPS, photon_ops
from .cache_photon import PhotonCache

logger = logging.get_logger(__name__)

# The manager honours max_new_tokens, EOS, do_sample, temperature, top_k and top_p per request; a generation config
# that sets any of these other settings away from its neutral value is refused.
_NEUTRAL = dict(
    num_beams=1, num_return_sequences=1, repetition_penalty=1.0, min_new_tokens=None, min_length=0,
    no_repeat_ngram_size=0, bad_words_ids=None, min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
    forced_bos_token_id=None, forced_eos_token_id=None, suppress_tokens=None, begin_suppress_tokens=None,
    sequence_bias=None, guidance_scale=None, penalty_alpha=None, assistant_model=None, prompt_lookup_num_tokens=None,
)


class RequestError(ValueError):
    """A request the manager refuses (empty prompt, too long for the pool, an unsupported setting)."""


class QueueFullError(RuntimeError):
    """Every row is held and the waiting queue is full: try again later (HTTP 503)."""


@dataclass
class SamplingSettings:
    """One request's decoding settings. `temperature` 0 or `do_sample=False` is greedy; `top_k` 0 and `top_p` 1.0
    are off; `seed` gives the request its own random numbers (as `torch.manual_seed(seed)` before `generate()`)."""

    max_new_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass
class _Request:
    request_id: str
    prompt: list[int]
    settings: SamplingSettings
    streaming: bool
    record_timestamps: bool
    generator: torch.Generator | None = None
    forced: deque = field(default_factory=deque)  # prompt tokens still to feed through shared steps
    generated: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    row: int | None = None
    created: float = field(default_factory=time.perf_counter)
    started: float = -1.0

    def output(self, status: RequestStatus, error: str | None = None) -> GenerationOutput:
        return GenerationOutput(
            request_id=self.request_id,
            prompt_ids=list(self.prompt),
            generated_tokens=list(self.generated),
            error=error,
            status=status,
            created_time=self.created,
            lifespan=(self.started, time.perf_counter() if status >= RequestStatus.FINISHED else -1),
            timestamps=list(self.timestamps) if self.record_timestamps else None,
        )


class _ThreadStatus:
    """What transformers' serving code reads of the worker: `fatal_error` (None while it is healthy)."""

    def __init__(self):
        self.fatal_error: str | None = None


class _SupportedKeys:
    """`logit_processor.supported_keys` (transformers 5.25's serve): the per-request sampling settings, by type."""

    supported_keys = {"temperature": float, "top_k": int, "top_p": float, "do_sample": bool, "seed": int}


class _Scheduler:
    def __init__(self, manager: PhotonBatchingManager):
        self._manager = manager

    @property
    def active_requests(self) -> dict[str, _Request]:
        return {r.request_id: r for r in self._manager._rows if r is not None}

    @property
    def waiting_requests(self) -> dict[str, _Request]:
        with self._manager._lock:
            return {r.request_id: r for r in self._manager._waiting}


class _PoolView:
    def __init__(self, manager: PhotonBatchingManager):
        self._manager = manager

    def compute_free_capacity(self) -> float:
        """The fraction of rows no request holds."""
        rows = self._manager._rows
        return sum(r is None for r in rows) / len(rows)


class _BatchProcessor:
    """The attributes transformers 5.25's serve reads for its state line (`scheduler`, `cache`)."""

    def __init__(self, manager: PhotonBatchingManager):
        self.scheduler = _Scheduler(manager)
        self.cache = _PoolView(manager)


def sample_tokens(logits: torch.Tensor, settings: list[SamplingSettings],
                  generators: list[torch.Generator | None]) -> torch.Tensor:
    """Next tokens [B] from logits [B, V], row b with `settings[b]`, the way `generate()` picks them: greedy rows
    take the argmax; the others are warped like transformers' `TemperatureLogitsWarper`, `TopKLogitsWarper` (k = 0:
    off) and `TopPLogitsWarper` (keeps at least one token), in that order, then drawn with `torch.multinomial`, from
    the row's own generator where it has one (else from torch's default one). The settings are host values: no
    device sync here."""
    choice = logits.argmax(-1)
    sampled = [row for row, s in enumerate(settings) if not s.greedy]
    if not sampled:
        return choice
    device = logits.device

    def per_row(values):
        return torch.tensor(values, device=device)

    scores = logits / per_row([1.0 if s.greedy else s.temperature for s in settings])[:, None].to(logits.dtype)
    vocab = scores.shape[-1]
    k = per_row([min(s.top_k, vocab) if s.top_k > 0 else vocab for s in settings])
    kth = scores.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    scores = scores.masked_fill(scores < kth, -float("inf"))
    ascending, order = scores.sort(dim=-1)
    cumulative = ascending.softmax(-1).cumsum(-1)
    remove = cumulative <= (1 - per_row([s.top_p for s in settings]).to(cumulative.dtype))[:, None]
    remove[:, -1] = False
    probs = scores.masked_fill(remove.scatter(1, order, remove), -float("inf")).softmax(-1)
    drawn = choice.clone()
    shared = [row for row in sampled if generators[row] is None]
    if shared:
        index = per_row(shared)
        drawn[index] = torch.multinomial(probs[index], 1)[:, 0]
    for row in sampled:  # a request's own seed: one draw from its own generator
        if generators[row] is not None:
            drawn[row] = torch.multinomial(probs[row : row + 1], 1, generator=generators[row])[0, 0]
    return drawn


class PhotonBatchingManager:
    """Continuous batching for a `PhotonForCausalLM`, with the surface of transformers' `ContinuousBatchingManager`
    that `generate_batch` and `transformers serve` use (5.17 to 5.25): `start`, `stop`, `add_request(s)`,
    `cancel_request`, `get_result`, `request_id_iter`, `register_result_handler`, `warmup`, `is_running`.

    Args:
        model: the model (its device and dtype are the pool's).
        generation_config: the defaults of every request (the model's when None).
        max_batch_size: rows in the pool (requests decoded at once).
        max_cache_len: columns a row holds: a request's prompt plus `max_new_tokens` must fit.
        align_phases: keep every row at the pool's phase of the meta-chunk (see the module docstring).
        max_queue_size: requests that may wait for a row; `add_request` raises `QueueFullError` past it.
        compile: compile the decode step (`PhotonModel.compiled_decode_column`) with `generation_config`'s
            `compile_config`. None: as `generate()` does, on CUDA unless `disable_compile`.
    """

    def __init__(self, model, generation_config: GenerationConfig | None = None, max_batch_size: int = 8,
                 max_cache_len: int | None = None, align_phases: bool = True, max_queue_size: int = 1024,
                 compile: bool | None = None):
        self.model = model
        self.config = model.config
        self.generation_config = generation_config if generation_config is not None else model.generation_config
        _check_generation_config(self.generation_config)
        self.max_batch_size = max_batch_size
        self.max_cache_len = max_cache_len or self.config.max_position_embeddings
        self.align_phases = align_phases
        self.max_queue_size = max_queue_size
        self.period = self.config.levels[-1].tokens_per_unit
        compile_config = self.generation_config.compile_config or CompileConfig()
        if compile is None:
            compile = model.device.type == "cuda" and not self.generation_config.disable_compile
        self._step_fn = model.model.compiled_decode_column(compile_config) if compile else None

        self.cache = PhotonCache(self.config, max_cache_len=self.max_cache_len)
        self.cache.begin_pool(max_batch_size, model.device, model.dtype)
        self._rows: list[_Request | None] = [None] * max_batch_size
        self._next = [0] * max_batch_size  # the token each row feeds at the next step

        self._lock = threading.Lock()
        self._waiting: deque[_Request] = deque()
        self._cancelled: set[str] = set()
        self._known: set[str] = set()
        self._wake = threading.Event()
        self._ids = itertools.count()
        self.output_queue: queue.Queue[GenerationOutput] = queue.Queue()
        self._handlers: dict[str, tuple] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.background_thread_status = _ThreadStatus()
        self.logit_processor = _SupportedKeys()
        self.batch_processor = _BatchProcessor(self)
        self.warmed_up = False
        self._warm_up_on_start = False
        self.steps = 0  # decode steps run (for benchmarks and tests)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self):
        """Start the background thread that admits requests and runs the decode steps."""
        if self.is_running():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="photon-continuous-batching", daemon=True)
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, block: bool = True, timeout: float | None = None, keep_for_next_session: bool = False):
        """Stop the background thread (requests still running stay where they are until `start` again)."""
        self._stop.set()
        self._wake.set()
        if block and self._thread is not None:
            self._thread.join(timeout)

    def destroy(self):
        """Fail whatever is still queued or running and drop the pool."""
        self.stop(block=True, timeout=5)
        with self._lock:
            pending = [*self._waiting, *[r for r in self._rows if r is not None]]
            self._waiting.clear()
        for request in pending:
            self._deliver(request.output(RequestStatus.FAILED, "the batching manager was destroyed"))
        self._rows = [None] * self.max_batch_size

    def warmup(self, *args, **kwargs):
        """Run the decode step over one meta-chunk on the empty pool: with `compile` this compiles every step's
        graph before the first request (transformers' manager captures its CUDA graphs here). CUDA graphs belong
        to the thread that captured them, so on CUDA the worker thread does this first thing after `start`."""
        if self.warmed_up:
            return
        self.warmed_up = True
        if self.model.device.type == "cuda":
            self._warm_up_on_start = True
        else:
            self._warm_up()

    @torch.no_grad()
    def _warm_up(self):
        self._warm_up_on_start = False
        for _ in range(self.period if self._step_fn is not None else 1):
            self._decode()

    # ------------------------------------------------------------------------------------------ requests
    def add_request(self, input_ids: list[int], request_id: str | None = None, max_new_tokens: int | None = None,
                    streaming: bool = False, record_timestamps: bool = False, eos_token_id=None,
                    stop_token_ids=None, do_sample: bool | None = None, temperature: float | None = None,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                    **unknown) -> str:
        """Queue a request; returns its id. Settings left None come from the manager's generation config.

        Raises `RequestError` (a ValueError) for an empty prompt, `max_new_tokens` < 1, a prompt plus budget longer
        than a row, a duplicate id or an unknown setting, and `QueueFullError` when the waiting queue is full.
        """
        if unknown:
            raise RequestError(f"Unsupported generation settings for PHOTON's batching manager: {sorted(unknown)}.")
        if torch.is_tensor(input_ids):
            input_ids = input_ids.reshape(-1).tolist()
        prompt = [int(t) for t in input_ids]
        if not prompt:
            raise RequestError("The prompt is empty: PHOTON needs at least one token.")
        if min(prompt) < 0 or max(prompt) >= self.config.vocab_size:
            raise RequestError(f"Token ids must lie in [0, {self.config.vocab_size}).")
        settings = self._settings(max_new_tokens, eos_token_id, stop_token_ids, do_sample, temperature, top_k, top_p,
                                  seed)
        if len(prompt) + settings.max_new_tokens > self.max_cache_len:
            raise RequestError(
                f"The prompt ({len(prompt)} tokens) plus max_new_tokens ({settings.max_new_tokens}) is longer than "
                f"a row of the pool (max_cache_len={self.max_cache_len})."
            )
        with self._lock:
            if request_id is None:
                request_id = f"req_{next(self._ids)}"
            if request_id in self._known:
                raise RequestError(f"A request with id {request_id!r} is already queued or running.")
            if len(self._waiting) >= self.max_queue_size:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting already: try again later.")
            generator = None
            if seed is not None and settings.do_sample:
                generator = torch.Generator(self.model.device).manual_seed(seed)
            request = _Request(request_id, prompt, settings, streaming, record_timestamps, generator)
            self._known.add(request_id)
            self._waiting.append(request)
        self._wake.set()
        return request_id

    def add_requests(self, inputs: list[list[int]], max_new_tokens: int | None = None, streaming: bool = False,
                     record_timestamps: bool = False, **settings) -> list[str]:
        return [self.add_request(ids, max_new_tokens=max_new_tokens, streaming=streaming,
                                 record_timestamps=record_timestamps, **settings) for ids in inputs]

    def cancel_request(self, request_id: str):
        """Drop a request: it leaves the queue, or frees its row before the next step."""
        with self._lock:
            if request_id in self._known:
                self._cancelled.add(request_id)
        self._wake.set()

    def get_result(self, request_id: str | None = None, timeout: float | None = None) -> GenerationOutput | None:
        """The next output (None after `timeout` seconds); with `request_id`, only that request's (others are put
        back)."""
        if self.background_thread_status.fatal_error is not None and self.output_queue.empty():
            return None
        try:
            result = self.output_queue.get(timeout=timeout) if timeout != 0 else self.output_queue.get_nowait()
        except queue.Empty:
            return None
        if request_id is not None and result.request_id != request_id:
            self.output_queue.put(result)
            return None
        return result

    def request_id_iter(self, request_id: str):
        """Yield the outputs of one request as they come, until it ends."""
        while self.is_running() or not self.output_queue.empty():
            result = self.get_result(request_id=request_id, timeout=0.1)
            if result is not None:
                yield result
                if result.is_finished():
                    return

    def register_result_handler(self, request_id: str, callback):
        """Deliver this request's outputs to `callback` on the running event loop (transformers 5.17-5.24 serve),
        instead of the output queue."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._handlers[request_id] = (callback, loop)

    # ----------------------------------------------------------------------------------------- internals
    def _settings(self, max_new_tokens, eos_token_id, stop_token_ids, do_sample, temperature, top_k, top_p, seed):
        config = self.generation_config
        max_new_tokens = config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = 20  # transformers' default generation length
        if int(max_new_tokens) < 1:
            raise RequestError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        eos = config.eos_token_id if eos_token_id is None else eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        eos += list(stop_token_ids or [])
        temperature_given = temperature is not None
        temperature = config.temperature if temperature is None else temperature
        temperature = 1.0 if temperature is None else float(temperature)
        if temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {temperature}.")
        if do_sample is None:  # an explicit temperature asks for sampling (an OpenAI client's 0: greedy)
            do_sample = True if temperature_given else bool(config.do_sample)
        # Unset in the request and the config: generate()'s defaults (GenerationConfig._get_default_generation_params)
        top_k = config.top_k if top_k is None else top_k
        top_p = config.top_p if top_p is None else top_p
        top_k, top_p = int(50 if top_k is None else top_k), float(1.0 if top_p is None else top_p)
        if top_k < 0 or not 0 < top_p <= 1:
            raise RequestError(f"top_k must be >= 0 and top_p in (0, 1], got {top_k} and {top_p}.")
        return SamplingSettings(int(max_new_tokens), frozenset(int(t) for t in eos), do_sample, temperature, top_k,
                                top_p, seed)

    def _deliver(self, *outputs: GenerationOutput):
        """Hand outputs to their result handlers (one wake-up of each event loop for all of them) or to the output
        queue."""
        by_loop: dict[int, tuple] = {}
        for output in outputs:
            with self._lock:
                handler = self._handlers.get(output.request_id)
                if output.is_finished():
                    self._handlers.pop(output.request_id, None)
                    self._known.discard(output.request_id)
                    self._cancelled.discard(output.request_id)
            if handler is None:
                self.output_queue.put(output)
            else:
                callback, loop = handler
                by_loop.setdefault(id(loop), (loop, []))[1].append((callback, output))
        for loop, calls in by_loop.values():
            loop.call_soon_threadsafe(_call_each, calls)

    @torch.no_grad()
    def iterate(self) -> bool:
        """One iteration of the worker, on the calling thread: drop cancelled requests, admit waiting ones into
        free rows, and run one decode step for the held rows. Returns whether a step ran. (`start` runs this in a
        loop on a thread of its own; tests call it directly to place joins and leaves at chosen steps.)"""
        self._drop_cancelled()
        self._admit()
        if all(r is None for r in self._rows):
            return False
        self._step()
        return True

    def _run(self):
        try:
            if self._warm_up_on_start:
                self._warm_up()
            with torch.no_grad():
                while not self._stop.is_set():
                    if not self.iterate():
                        self._wake.wait(0.05)
                        self._wake.clear()
        except Exception as error:  # the worker is dead: fail everything it held, and say why
            logger.exception("PHOTON's batching worker failed")
            self.background_thread_status.fatal_error = f"{type(error).__name__}: {error}"
            with self._lock:
                pending = [*self._waiting, *[r for r in self._rows if r is not None]]
                self._waiting.clear()
            self._rows = [None] * self.max_batch_size
            for request in pending:
                self._deliver(request.output(RequestStatus.FAILED, self.background_thread_status.fatal_error))

    def _drop_cancelled(self):
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            self._waiting = deque(r for r in self._waiting if r.request_id not in cancelled)
            for request_id in cancelled:
                self._known.discard(request_id)
                self._handlers.pop(request_id, None)
        for row, request in enumerate(self._rows):
            if request is not None and request.request_id in cancelled:
                self._free(row)
                logger.info(f"Request {request.request_id} cancelled after {len(request.generated)} tokens: row {row} "
                            "is free")

    def _admit(self):
        """Prefill waiting requests alone and write them into free rows (in arrival order; with `align_phases` a
        request whose prompt cannot reach the pool's phase yet waits for a later step)."""
        free = [row for row, r in enumerate(self._rows) if r is None]
        while free:
            with self._lock:
                request = self._pick()
            if request is None:
                return
            row = free.pop(0)
            try:
                self._prefill(request, row)
            except Exception as error:  # this request's fault (or an out-of-memory): fail it, keep serving
                logger.exception(f"Prefilling request {request.request_id} failed")
                self._rows[row] = None
                self._deliver(request.output(RequestStatus.FAILED, f"{type(error).__name__}: {error}"))

    def _pick(self) -> _Request | None:
        """The first waiting request that can join now (called with the lock held)."""
        if not self._waiting:
            return None
        if not self.align_phases or all(r is None for r in self._rows):
            return self._waiting.popleft()
        for request in self._waiting:
            if self._aligned_prefix(len(request.prompt)) >= 1:
                self._waiting.remove(request)
                return request
        return None

    def _aligned_prefix(self, length: int) -> int:
        """The longest prompt prefix whose row then has the pool's phase: count = seen - pad (mod P_L)."""
        target = (self.cache.seen - self._phase()) % self.period
        return length - (length - target) % self.period

    def _phase(self) -> int:
        """The padding (mod P_L) every held row shares."""
        held = [row for row, r in enumerate(self._rows) if r is not None]
        return self.cache.pads[held[0]] % self.period if held else 0

    def _prefill(self, request: _Request, row: int):
        model = self.model
        length = len(request.prompt)
        idle = all(r is None for r in self._rows)
        prefix = length if not self.align_phases or idle else self._aligned_prefix(length)
        single = PhotonCache(self.config, max_cache_len=self.max_cache_len)
        ids = torch.tensor([request.prompt[:prefix]], device=model.device)
        logits = model(ids, cache=single, use_cache=True, logits_to_keep=1).logits[:, -1]
        self.cache.write_row(row, single)
        if self.align_phases and idle:  # the pool takes this request's phase: move the free rows to it
            others = [r for r in range(self.max_batch_size) if r != row]
            self.cache.park_rows(others, [prefix % self.period] * len(others))
        request.row, request.started = row, time.perf_counter()
        request.forced = deque(request.prompt[prefix:])
        self._rows[row] = request
        if request.forced:
            self._next[row] = request.forced.popleft()
        else:
            output = self._take(request, self._sample(logits, [request])[0])
            if output is not None:
                self._deliver(output)

    def _free(self, row: int):
        self._rows[row] = None

    def _decode(self) -> torch.Tensor:
        """One decode column for every row of the pool: logits [B, V]."""
        counts = self.cache.real_tokens()
        stale = [row for row, r in enumerate(self._rows) if r is None and counts[row] >= self.max_cache_len - 1]
        if stale:  # free rows step with the batch: move them back by whole meta-chunks (same phase)
            self.cache.park_rows(stale, [counts[row] % self.period for row in stale])
        tokens = torch.tensor(self._next, device=self.model.device)
        step = self.cache.begin_column()
        if self._step_fn is not None:
            hidden = self._step_fn(self.cache, tokens, step, REFERENCE_OPS)
        else:
            ops = photon_ops(self.config, self.model.device, self.model.dtype)
            hidden = self.model.model.decode_column(self.cache, tokens, step, ops)
        self.steps += 1
        return self.model.lm_head(hidden)

    def _step(self):
        logits = self._decode()
        held = [(row, r) for row, r in enumerate(self._rows) if r is not None]
        sampling = [(row, r) for row, r in held if not r.forced]
        for row, request in held:
            if request.forced:
                self._next[row] = request.forced.popleft()
        if not sampling:
            return
        rows = torch.tensor([row for row, _ in sampling], device=logits.device)
        tokens = self._sample(logits.index_select(0, rows), [r for _, r in sampling])
        outputs = [self._take(request, token) for (_, request), token in zip(sampling, tokens, strict=True)]
        self._deliver(*[output for output in outputs if output is not None])

    def _sample(self, logits: torch.Tensor, requests: list[_Request]) -> list[int]:
        """The next token of each request, from its logits [n, V] (float32, as generate() reads them)."""
        tokens = sample_tokens(logits.float(), [r.settings for r in requests], [r.generator for r in requests])
        return tokens.tolist()

    def _take(self, request: _Request, token: int) -> GenerationOutput | None:
        """A request's new token: ends the request (freeing its row) on EOS, a stop id or its budget. Returns the
        output to deliver (None when a non-streaming request goes on)."""
        request.generated.append(token)
        if request.record_timestamps:
            request.timestamps.append(time.perf_counter())
        self._next[request.row] = token
        done = token in request.settings.eos_token_ids or len(request.generated) >= request.settings.max_new_tokens
        if done:
            self._free(request.row)
            return request.output(RequestStatus.FINISHED)
        return request.output(RequestStatus.DECODING) if request.streaming else None


def _call_each(calls: list[tuple]):
    for callback, output in calls:
        callback(output)


def _check_generation_config(config: GenerationConfig):
    """Refuse the settings the manager cannot honour, rather than ignoring them."""
    refused = []
    for name, neutral in _NEUTRAL.items():
        value = getattr(config, name, neutral)
        if value is not None and value != neutral and not (neutral is None and value in (0, 1.0, False)):
            refused.append(f"{name}={value!r}")
    if refused:
        raise ValueError(
            "PHOTON's batching manager decodes greedily or samples (temperature, top_k, top_p) with EOS/stop ids and "
            f"max_new_tokens per request; these settings are not supported: {', '.join(refused)}. Use generate()."
        )
