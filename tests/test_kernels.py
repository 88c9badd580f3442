"""The Triton kernels against their PyTorch references on CPU, in Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 when there is no GPU): outputs and every input gradient, tiny odd shapes, GQA, per-row key
ranges (padding), all three dtypes, NaN-poisoned outputs; then the model with kernel_backend="triton" against
kernel_backend="torch" (logits, gradients, a few training steps, cached generation, LoRA)."""

import copy
import functools
import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_checks import check_kernel

import photon_kernels as pk
from photon_hf import PhotonForCausalLM, photon_preset

pytestmark = [
    pytest.mark.skipif(not pk.HAS_TRITON, reason="triton is not installed (pip install 'photon-hf[triton]')"),
    pytest.mark.skipif(
        not pk.interpreting(),
        reason="CPU kernel tests need TRITON_INTERPRET=1 before photon_kernels is imported (conftest.py sets it "
        "when no GPU is visible); on a GPU machine run tests/test_kernels_gpu.py",
    ),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _qkv(n, heads, kv_heads, seq, head_dim, layout="bhsd"):
    """q [n, H, S, hd], k, v [n, Hkv, S, hd]; layout "bshd" gives the model's strides (views of [n, S, H, hd])."""
    if layout == "bshd":
        make = lambda h: torch.randn(n, seq, h, head_dim).transpose(1, 2)
    else:
        make = lambda h: torch.randn(n, h, seq, head_dim)
    return [make(heads), make(kv_heads), make(kv_heads)]


# ------------------------------------------------------------------------------------------ chunk-local attention
@pytest.mark.parametrize(
    "n, heads, kv_heads, window, head_dim, layout",
    [
        (7, 4, 2, 5, 12, "bhsd"),  # GQA; 7 windows over tiles of 3 (the last one partly empty); hd 12 -> 16
        (7, 4, 4, 5, 12, "bshd"),  # the model's layout (transposed views)
        (5, 2, 2, 1, 8, "bhsd"),  # one-position windows
        (3, 2, 1, 16, 6, "bhsd"),  # one window fills a whole tile
        (2, 2, 1, 21, 8, "bhsd"),  # longer than a tile: goes through the latent-stream kernel
    ],
)
def test_chunk_local_attention_fp32(n, heads, kv_heads, window, head_dim, layout):
    inputs = _qkv(n, heads, kv_heads, window, head_dim, layout)
    check_kernel(pk.chunk_local_attention, pk.chunk_local_attention_ref, inputs, torch.float32, "qkv")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chunk_local_attention_16bit(dtype):
    check_kernel(pk.chunk_local_attention, pk.chunk_local_attention_ref, _qkv(7, 4, 2, 5, 12), dtype, "qkv")


# ----------------------------------------------------------------------------------------- latent-stream attention
@pytest.mark.parametrize("window", [None, 1, 5, 16, 37, 100])
def test_latent_attention_windows(window):
    # 37 units: three query tiles of 16, the last one ragged; the window starts mid-tile; GQA 4 / 2.
    check_kernel(pk.latent_attention, pk.latent_attention_ref, _qkv(2, 4, 2, 37, 12), torch.float32, "qkv",
                 window=window)


@pytest.mark.parametrize(
    "n, heads, kv_heads, seq, head_dim, window, dtype",
    [
        (1, 2, 2, 1, 8, None, torch.float32),  # a single unit
        (2, 2, 2, 19, 10, 4, torch.float32),  # multi-head, windowed
        (2, 4, 2, 23, 12, None, torch.float16),
        (2, 4, 1, 23, 12, 6, torch.bfloat16),  # GQA 4 / 1, windowed
    ],
)
def test_latent_attention_shapes(n, heads, kv_heads, seq, head_dim, window, dtype):
    check_kernel(pk.latent_attention, pk.latent_attention_ref, _qkv(n, heads, kv_heads, seq, head_dim), dtype, "qkv",
                 window=window)


# ------------------------------------------------------------------------------------------ decode-time attention
def _cache(batch, kv_heads, capacity, head_dim, layers=3):
    """One layer of a [layers, B, Hkv, capacity, hd] cache, as the model passes it (a strided view)."""
    return torch.randn(layers, batch, kv_heads, capacity, head_dim)[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_attention_per_row_ranges(dtype, num_splits):
    # 4 queries over 3 of 6 cache rows (one row twice); per-row [start, end): a padded row with 1 key, a window,
    # a full row, a ring buffer that has not wrapped yet.
    q = torch.randn(4, 4, 12)
    k, v = _cache(6, 2, 50, 12), _cache(6, 2, 50, 12)
    rows = torch.tensor([5, 0, 3, 3])
    start, end = torch.tensor([0, 3, 10, 0]), torch.tensor([50, 4, 33, 17])
    kernel = functools.partial(pk.decode_attention, num_splits=num_splits)
    check_kernel(kernel, pk.decode_attention_ref, [q, k, v], dtype, "qkv", grad=False, start=start, end=end, rows=rows)


@pytest.mark.parametrize("num_splits", [None, 1, 4])
def test_decode_attention_all_rows(num_splits):
    # Every row, shared int bounds, multi-head: the model's common case.
    q, k, v = torch.randn(5, 2, 10), _cache(5, 2, 40, 10), _cache(5, 2, 40, 10)
    kernel = functools.partial(pk.decode_attention, num_splits=num_splits)
    check_kernel(kernel, pk.decode_attention_ref, [q, k, v], torch.float32, "qkv", grad=False, start=7, end=40)


# ------------------------------------------------------------------------------------------- chunk compression
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_chunk_compress(dtype, bias):
    # 2 x 10 rows of C = 3 concatenated 24-wide units (K = 72, not a multiple of the 32-wide K tile), N = 24.
    x = torch.randn(2, 10, 3, 24).flatten(-2)
    norm_weight, weight = torch.rand(72) + 0.5, torch.randn(24, 72) / 72**0.5
    inputs = [x, norm_weight, weight] + ([torch.randn(24)] if bias else [])
    kernel = pk.chunk_compress if bias else (lambda x, g, w, **kw: pk.chunk_compress(x, g, w, None, **kw))
    reference = pk.chunk_compress_ref if bias else (lambda x, g, w, **kw: pk.chunk_compress_ref(x, g, w, None, **kw))
    check_kernel(kernel, reference, inputs, dtype, ["x", "norm_weight", "weight", "bias"], eps=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype):
    x = torch.randn(40, 19)[::2, 1:]  # 20 strided rows of 18
    check_kernel(pk.rms_norm, pk.rms_norm_ref, [x, torch.rand(18) + 0.5], dtype, ["x", "weight"], eps=1e-5)


# ---------------------------------------------------------------------------------------- poisoning, errors, API
def test_poisoning_catches_unwritten_outputs(monkeypatch):
    """The NaN poisoning is what makes the checks above able to fail: launch half of the forward tiles and the
    output check must fail."""
    module = importlib.import_module("photon_kernels.chunk_local_attention")
    full_grid = module._grid
    half_grid = lambda n, heads, window: lambda meta: (full_grid(n, heads, window)(meta)[0] // 2,)
    monkeypatch.setattr(module, "_grid", half_grid)
    with pytest.raises(AssertionError, match="NaN"):
        check_kernel(pk.chunk_local_attention, pk.chunk_local_attention_ref, _qkv(12, 2, 2, 5, 8), torch.float32,
                     "qkv", grad=False)


def test_shape_and_dtype_errors():
    q, k, v = _qkv(2, 3, 2, 5, 8)
    with pytest.raises(ValueError, match="GQA"):
        pk.chunk_local_attention(q, k, v)
    q, k, v = _qkv(2, 2, 2, 5, 8)
    with pytest.raises(ValueError, match="dtype"):
        pk.latent_attention(q, k.half(), v)
    with pytest.raises(ValueError, match="window"):
        pk.latent_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="rows"):
        pk.decode_attention(torch.randn(2, 2, 8), torch.randn(3, 2, 9, 8), torch.randn(3, 2, 9, 8), 0, 9)
    with pytest.raises(ValueError, match="norm_weight"):
        pk.chunk_compress(torch.randn(4, 8), torch.ones(7), torch.randn(3, 8), None)


def test_kernel_dispatch(monkeypatch):
    """photon_ops resolves every op once per forward: "torch" never takes a kernel, "auto" only on CUDA and not where
    PyTorch measured faster, "triton" always; never for float64, never the (inference-only) decode kernel with
    gradients on."""
    from photon_hf.attention_photon import REFERENCE_OPS, photon_ops

    def chosen(ops):  # op -> whether it runs its kernel
        return {op: ops.chunk_compress if op == "chunk_compress" else getattr(ops, op) is not getattr(REFERENCE_OPS, op)
                for op in pk.OPS}

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert photon_ops(_tiny_config(kernel_backend="torch"), cpu, torch.float32) is REFERENCE_OPS
    assert photon_ops(_tiny_config(kernel_backend="auto"), cpu, torch.float32) is REFERENCE_OPS  # auto: CUDA only
    triton = _tiny_config(kernel_backend="triton")  # the interpreter is on
    with torch.no_grad():
        assert all(chosen(photon_ops(triton, cpu, torch.float32)).values())
        assert photon_ops(triton, cpu, torch.float64) is REFERENCE_OPS  # the kernels take 16- and 32-bit floats
    assert chosen(photon_ops(triton, cpu, torch.bfloat16)) == {op: op != "decode_attention" for op in pk.OPS}
    # Pretend Triton can run on CUDA: "auto" takes every kernel except the ones measured slower.
    monkeypatch.setattr(pk, "triton_unavailable_reason", lambda device: None)
    with torch.no_grad():
        auto = chosen(photon_ops(_tiny_config(kernel_backend="auto"), cuda, torch.bfloat16))
    assert auto == {op: op not in pk.AUTO_PREFERS_TORCH for op in pk.OPS}


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 is not set"):
        pk.chunk_local_attention(*_qkv(2, 2, 2, 5, 8))
    model = PhotonForCausalLM(_tiny_config(kernel_backend="triton"))
    with pytest.raises(RuntimeError, match="kernel_backend='triton' cannot run here.*TRITON_INTERPRET=1 is not set"):
        model(torch.randint(0, 64, (1, 8)))


def test_repository_root_shadows_no_installed_package():
    """The tests and `python -m bench...` put the repository root first on sys.path, so a package there hides an
    installed one of the same name: a root `kernels/` once hid the Hugging Face `kernels` package, which transformers
    imports when it is installed. The root holds only `bench`, a name no installed distribution provides, and the
    kernels are imported from the installed `photon_kernels`."""
    root = Path(__file__).resolve().parents[1]
    packages = {path.parent.name for path in root.glob("*/__init__.py")}
    assert packages == {"bench"}
    assert not packages & set(importlib.metadata.packages_distributions())
    assert Path(pk.__file__).resolve().parent.name == "photon_kernels"


def test_without_triton_installed():
    """photon_kernels imports without Triton, its references work, kernels and kernel_backend="triton" raise."""
    code = """
import sys
sys.modules["triton"] = None  # import triton -> ImportError
import torch, photon_kernels as pk
from photon_hf import PhotonForCausalLM, photon_preset
assert not pk.HAS_TRITON
q = torch.randn(2, 2, 5, 8)
assert pk.chunk_local_attention_ref(q, q, q).shape == q.shape
try:
    pk.chunk_local_attention(q, q, q)
except RuntimeError as e:
    assert "triton` package is not installed" in str(e), e
else:
    raise AssertionError("no error")
ids = torch.randint(0, 64, (1, 8))
PhotonForCausalLM(photon_preset("tiny", chunk_sizes=[2, 2]))(ids)  # "auto" falls back to PyTorch
try:
    PhotonForCausalLM(photon_preset("tiny", chunk_sizes=[2, 2], kernel_backend="triton"))(ids)
except RuntimeError as e:
    assert "cannot run here" in str(e), e
else:
    raise AssertionError("no error")
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ the model
def _tiny_config(**overrides):
    """The registry's tiny shape with odd chunks (2, 3), GQA, two-layer decoders and the bottom encoder windowed
    (ring cache), the top one full causal; half its width, for the Triton interpreter's sake."""
    fields = dict(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_key_value_heads=2, chunk_sizes=[2, 3],
        num_decoder_layers=2, kernel_backend="torch", encoder_windows=[3, None],
    )
    fields.update(overrides)
    return photon_preset("tiny", **fields)


class _Calls:
    """Counts the calls the model makes into photon_kernels."""

    NAMES = ("chunk_compress", "rms_norm", "chunk_local_attention", "latent_attention", "decode_attention")

    def __init__(self, monkeypatch):
        self.counts = dict.fromkeys(self.NAMES, 0)
        for name in self.NAMES:
            monkeypatch.setattr(pk, name, self._counted(name, getattr(pk, name)))

    def _counted(self, name, fn):
        def wrapper(*args, **kwargs):
            self.counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    def reset(self):
        self.counts = dict.fromkeys(self.NAMES, 0)


def _left_padded_batch(batch=2, length=23, pads=(0, 4), vocab=64):
    ids = torch.randint(0, vocab, (batch, length))
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("decoder_input", ["encoder", "self"])
def test_model_logits_and_gradients_match(monkeypatch, decoder_input):
    calls = _Calls(monkeypatch)
    model = PhotonForCausalLM(_tiny_config(decoder_input=decoder_input, recursive_loss_weight=0.5))
    ids, mask = _left_padded_batch()
    results = {}
    for backend in ("torch", "triton"):
        model.config.kernel_backend = backend
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (out.logits.detach(), out.loss.detach(), grads)
    (ref_logits, ref_loss, ref_grads), (logits, loss, grads) = results["torch"], results["triton"]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for name, grad in grads.items():
        err = ((grad - ref_grads[name]).norm() / ref_grads[name].norm().clamp_min(1e-12)).item()
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"
    assert calls.counts["chunk_compress"] >= 1 and calls.counts["chunk_local_attention"] >= 2
    assert calls.counts["latent_attention"] >= 2  # windowed bottom encoder, full causal top encoder
    assert calls.counts["rms_norm"] == 0


def test_model_loss_curve_matches():
    torch.manual_seed(0)
    base = PhotonForCausalLM(_tiny_config())
    curves = {}
    for backend in ("torch", "triton"):
        model = copy.deepcopy(base)
        model.config.kernel_backend = backend
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(7)
        curve = []
        for _ in range(3):
            ids = torch.randint(0, 64, (2, 18), generator=generator)
            loss = model(ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            curve.append(loss.item())
        curves[backend] = curve
    assert curves["torch"][-1] < curves["torch"][0]  # it trains
    torch.testing.assert_close(torch.tensor(curves["triton"]), torch.tensor(curves["torch"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lookback", [None, 6], ids=["plain", "lookback"])
def test_model_generation_matches(monkeypatch, lookback):
    """Generation through the kernels equals the PyTorch path; with a token look-back too (its windows stay on
    SDPA, its decode steps go through the decode kernel with per-row look-back ranges)."""
    calls = _Calls(monkeypatch)
    model = PhotonForCausalLM(_tiny_config(decoder_lookback=lookback)).eval()
    ids, mask = _left_padded_batch(length=9, pads=(0, 3))
    outputs = {}
    for backend in ("torch", "triton"):
        model.config.kernel_backend = backend
        outputs[backend] = model.generate(
            ids, attention_mask=mask, max_new_tokens=14, min_new_tokens=14, do_sample=False, output_logits=True,
            return_dict_in_generate=True,
        )
    ref, out = outputs["torch"], outputs["triton"]
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ref.logits), rtol=1e-5, atol=1e-5)
    assert calls.counts["decode_attention"] > 0 and calls.counts["chunk_compress"] > 0


def test_lora_chunker_is_not_read_behind_peft(monkeypatch):
    """A LoRA-wrapped chunker projection runs as a module (LoRA sees its input); only its RMSNorm is fused."""
    peft = pytest.importorskip("peft")
    calls = _Calls(monkeypatch)
    base = PhotonForCausalLM(_tiny_config())
    config = peft.LoraConfig(r=4, target_modules=["chunker", "q_proj"], init_lora_weights=False)
    lora = peft.get_peft_model(base, config)
    seen = []
    chunker = lora.base_model.model.model.levels[1].chunker
    chunker.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    ids, mask = _left_padded_batch()
    results = {}
    for backend in ("torch", "triton"):
        lora.base_model.model.config.kernel_backend = backend
        lora.zero_grad()
        out = lora(input_ids=ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}
        results[backend] = (out.logits.detach(), grads)
    assert len(seen) == 2  # the wrapped projection ran (and saw its input) under both backends
    assert calls.counts["chunk_compress"] == 0 and calls.counts["rms_norm"] == 1
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
    for name, grad in results["triton"][1].items():
        torch.testing.assert_close(grad, results["torch"][1][name], rtol=1e-4, atol=1e-6)


def test_auto_on_cpu_uses_pytorch(monkeypatch):
    calls = _Calls(monkeypatch)
    model = PhotonForCausalLM(_tiny_config(kernel_backend="auto"))
    model(torch.randint(0, 64, (1, 12)))
    assert sum(calls.counts.values()) == 0


# ---------------------------------------------------------------------------------------------- the benchmark
def test_benchmark_quick_mode(tmp_path):
    """`python -m bench.kernels.bench_kernels --quick` runs every section end to end on CPU and writes its JSON."""
    import json

    root = os.path.join(os.path.dirname(__file__), os.pardir)
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "bench.kernels.bench_kernels", "--quick", "--out", str(out)],
                            capture_output=True, text=True, cwd=root, env=dict(os.environ, TRITON_INTERPRET="1"),
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == [], report["errors"]
    assert {row["op"] for row in report["kernels"]} == set(pk.OPS)
    assert any("LoRA" in row["name"] for row in report["kernels"])  # the norm-only chunker path is timed too
    assert {"torch", "triton"} <= set(report["end_to_end"]["train_step_ms"])
    tail = result.stdout[result.stdout.rindex("| kernel | shape |"):]  # the tables come last
    assert "training step" in tail and "[run" not in tail and "auto rule" in tail


def test_model_trains_under_autocast_with_kernels():
    """Under autocast the projections are bfloat16 while RoPE runs in float32, so q, k, v reach the kernels with
    mixed dtypes; the model casts them as SDPA would, and the loss follows the PyTorch path."""
    torch.manual_seed(0)
    config = _tiny_config(kernel_backend="torch", encoder_windows=[3, None])
    model = PhotonForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (2, 40))
    losses = {}
    for backend in ("torch", "triton"):
        model.config.kernel_backend = backend
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        losses[backend] = loss.item()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert abs(losses["triton"] - losses["torch"]) < 2e-2 * losses["torch"]
