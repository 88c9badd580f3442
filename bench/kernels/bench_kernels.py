"""Kernel benchmark: each Triton kernel against the PyTorch path it replaces, and PhotonForCausalLM end to end.

For the shapes of a preset (default the paper's 600M, bf16) at batch x seq tokens, in one run on one GPU:

1. every kernel against the PyTorch reference the model runs instead (`photon_hf.attention_photon`, same inputs),
   forward and forward + backward, median of `triton.testing.do_bench`;
2. `PhotonForCausalLM` with kernel_backend = "torch", "auto" and "triton": training step (forward + backward with
   labels), generation prefill (cache built, last logits, as `generate` does) and a no-grad forward (all
   logits), each with the logits' difference from the "torch" run;
3. a check of the "auto" rule: an op that auto routes to Triton must not be slower than PyTorch.

Every section catches its own failure (traceback printed, the run goes on) and the run keeps to --budget-s. The
JSON goes to --out; a markdown table is printed last.

    python -m bench.kernels.bench_kernels --out bench.json                    # CUDA, photon-600m, batch 8 x 2048
    TRITON_INTERPRET=1 python -m bench.kernels.bench_kernels --quick --out q.json  # CPU smoke test, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback

if "--quick" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # before photon_kernels compiles its kernels

import torch  # noqa: E402

import photon_kernels as pk  # noqa: E402
from bench.common import Budget, cuda_ms, host_ms, versions  # noqa: E402
from photon_hf import PhotonConfig, PhotonForCausalLM, photon_preset  # noqa: E402
from photon_hf.attention_photon import cached_attention, causal_attention, window_attention  # noqa: E402
from photon_hf.modeling_photon import PhotonRMSNorm  # noqa: E402

QUICK_SHAPE = dict(name="tiny", num_key_value_heads=2)  # the CPU smoke test: the registry's tiny shape, with GQA


class KernelBench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cpu" if args.quick else "cuda")
        self.dtype = torch.float32 if args.quick else getattr(torch, args.dtype)
        self.budget = Budget(args.budget_s)
        self.report = dict(
            device=torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu (Triton interpreter)",
            torch=torch.__version__, triton=versions()["triton"] or "not installed",
            preset="quick" if args.quick else args.preset,
            dtype=str(self.dtype).removeprefix("torch."), batch=args.batch, seq=args.seq, budget_s=args.budget_s,
            kernels=[], end_to_end={}, selection={}, skipped=[], errors=[],
        )

    # ------------------------------------------------------------------------------------------- helpers
    def config(self, kernel_backend="torch") -> PhotonConfig:
        if self.args.quick:
            return photon_preset(**QUICK_SHAPE, kernel_backend=kernel_backend)
        return photon_preset(self.args.preset, kernel_backend=kernel_backend)

    def time_ms(self, fn, grad_to_none=None) -> float:
        """Median milliseconds of fn() (do_bench on CUDA; a few host-timed calls in the CPU smoke test)."""
        if self.device.type == "cuda":
            import triton.testing

            return triton.testing.do_bench(fn, warmup=self.args.warmup_ms, rep=self.args.rep_ms,
                                           grad_to_none=grad_to_none, return_mode="median")
        return host_ms(fn, repeats=2)

    def section(self, name: str, needs_s: float, fn) -> None:
        """Run one section unless the budget is spent; a failure is printed and recorded, and the run goes on."""
        if self.budget.remaining() < needs_s:
            print(f"[skip] {name}: {self.budget.remaining():.0f} s of budget left, needs about {needs_s:.0f} s",
                  flush=True)
            self.report["skipped"].append(name)
            return
        print(f"[run ] {name} ({self.budget.remaining():.0f} s left)", flush=True)
        try:
            fn()
        except Exception:  # noqa: BLE001 - report and continue: the run is one short GPU lease
            trace = traceback.format_exc()
            print(f"[fail] {name}\n{trace}", flush=True)
            self.report["errors"].append({"section": name, "traceback": trace})
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def randn(self, *shape, grad=False) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=self.dtype).requires_grad_(grad)

    def qkv(self, n, seq, heads, kv_heads, head_dim):
        """q, k, v with the model's strides: views [n, H, S, hd] of [n, S, H, hd] projections."""
        return [self.randn(n, seq, h, head_dim).transpose(1, 2).detach().requires_grad_()
                for h in (heads, kv_heads, kv_heads)]

    def compare(self, op, name, shape, torch_fn, triton_fn, inputs=(), backward=True):
        """Time the PyTorch path and the kernel, forward and (with `backward`) forward + backward."""
        inputs = list(inputs)
        with torch.no_grad():
            ref, out = torch_fn(), triton_fn()
        rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        passes = [("fwd", torch_fn, triton_fn)]
        if backward:
            grad = torch.randn_like(ref)
            passes.append(("fwd+bwd", lambda: torch_fn().backward(grad), lambda: triton_fn().backward(grad)))
        for label, t_fn, k_fn in passes:
            with torch.no_grad() if label == "fwd" else torch.enable_grad():
                torch_ms = self.time_ms(t_fn, grad_to_none=inputs)
                triton_ms = self.time_ms(k_fn, grad_to_none=inputs)
            row = {"op": op, "name": name, "shape": shape, "pass": label, "torch_ms": torch_ms,
                   "triton_ms": triton_ms, "speedup": torch_ms / triton_ms, "rel_diff": rel}
            self.report["kernels"].append(row)
            print(f"       {name:34s} {label:8s} torch {torch_ms:9.3f} ms  triton {triton_ms:9.3f} ms  "
                  f"x{torch_ms / triton_ms:5.2f}  rel diff {rel:.1e}", flush=True)

    # ------------------------------------------------------------------------------------------ sections
    def shapes(self):
        cfg = self.config()
        meta = cfg.tokens_per_unit[-1]
        tokens = math.ceil((self.args.seq + 1) / meta) * meta  # the model pads to meta-chunks, + room for T
        units = [tokens // p for p in cfg.tokens_per_unit]
        return cfg, units

    def kernel_sections(self, reserve_s: float):
        cfg, units = self.shapes()
        b, d, hd = self.args.batch, cfg.hidden_size, cfg.head_dim
        h, hkv = cfg.num_attention_heads, cfg.num_key_value_heads

        for level in range(cfg.num_levels):
            window = cfg.converter_width[level] + cfg.chunk_sizes[level] - 1
            n = b * units[level]

            def local(n=n, window=window, level=level):
                q, k, v = self.qkv(n, window, h, hkv, hd)
                self.compare("chunk_local_attention", f"decoder L{level} windows", [n, h, window, hd],
                             lambda: window_attention(q, k, v), lambda: pk.chunk_local_attention(q, k, v), (q, k, v))

            self.section(f"chunk_local_attention L{level}", reserve_s + 5, local)

        for level in range(cfg.num_levels):
            seq = units[level]
            for window in (None, max(2, min(64, seq // 4))):
                op = "latent_attention_full" if window is None else "latent_attention"

                def latent(seq=seq, window=window, op=op, level=level):
                    q, k, v = self.qkv(b, seq, h, hkv, hd)
                    self.compare(op, f"encoder L{level} " + ("causal" if window is None else f"window {window}"),
                                 [b, h, seq, hd], lambda: causal_attention(q, k, v, window),
                                 lambda: pk.latent_attention(q, k, v, window), (q, k, v))

                self.section(f"{op} L{level} window={window}", reserve_s + 5, latent)

        for level in range(1, cfg.num_levels):
            width = cfg.chunk_sizes[level] * d
            rows = b * units[level]

            def compress(width=width, rows=rows, level=level):
                norm = PhotonRMSNorm(width, eps=cfg.rms_norm_eps).to(self.device, self.dtype)
                linear = torch.nn.Linear(width, d).to(self.device, self.dtype)
                with torch.no_grad():
                    norm.weight.uniform_(0.5, 1.5)
                x = self.randn(rows, width, grad=True)
                params = [x, norm.weight, linear.weight, linear.bias]
                eps = norm.variance_epsilon
                self.compare("chunk_compress", f"chunker L{level} norm+linear", [rows, width, d],
                             lambda: linear(norm(x)), lambda: pk.chunk_compress(x, *params[1:], eps), params)
                self.compare("chunk_compress", f"chunker L{level} norm (LoRA path)", [rows, width],
                             lambda: norm(x), lambda: pk.rms_norm(x, norm.weight, eps), params[:2])

            self.section(f"chunk_compress L{level}", reserve_s + 5, compress)

        def decode(rows, capacity, per_row: bool, name):
            """The top encoder's cache at generation time: [rows, Hkv, capacity, hd] keys and values, one query per row,
            per-row valid lengths (left padding) or one shared length; the torch path is the model's reference."""
            q = self.randn(rows, h, hd)
            keys, values = self.randn(rows, hkv, capacity, hd), self.randn(rows, hkv, capacity, hd)
            end = torch.randint(1, capacity + 1, (rows,), device=self.device) if per_row else capacity
            torch_fn = lambda: cached_attention(q, keys, values, 0, end)
            triton_fn = lambda: pk.decode_attention(q, keys, values, 0, end)
            self.compare("decode_attention", name, [rows, h, capacity, hd], torch_fn, triton_fn, backward=False)

        capacity = max(1, self.args.seq // cfg.tokens_per_unit[-1])
        rows = 8 if self.args.quick else self.args.decode_batch

        def decodes():
            decode(rows, capacity, False, f"decode top cache, batch {rows}")
            decode(rows, capacity, True, f"decode top cache, batch {rows}, ragged")
            decode(2, 16 * capacity, True, "decode long cache, batch 2 (split)")

        self.section("decode_attention", reserve_s + 5, decodes)

    def end_to_end(self):
        """Training step, prefill and forward per backend; on running out of GPU memory, again at half the batch."""
        with torch.device(self.device):
            model = PhotonForCausalLM(self.config()).to(self.dtype)
        batch = self.args.batch
        while True:
            try:
                return self._end_to_end(model, batch)
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                print(f"[oom ] end to end at batch {batch}: retrying at batch {batch // 2}", flush=True)
                batch //= 2
                torch.cuda.empty_cache()

    def _end_to_end(self, model, batch):
        results = self.report["end_to_end"]
        results.update(batch=batch, train_step_ms={}, prefill_ms={}, forward_ms={}, peak_train_gib={},
                       logits_rel_diff={})
        ids = torch.randint(0, model.config.vocab_size, (batch, self.args.seq), device=self.device)
        reference = None
        for backend in ("torch", "auto", "triton"):
            needs = 10 if self.args.quick else 25
            if self.budget.remaining() < needs:
                print(f"[skip] end to end, {backend}: budget", flush=True)
                self.report["skipped"].append(f"end_to_end {backend}")
                continue
            model.config.kernel_backend = backend

            def step():
                model(ids, labels=ids).loss.backward()
                model.zero_grad(set_to_none=True)

            step()  # compiles and autotunes the kernels on the first Triton pass
            if self.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            results["train_step_ms"][backend] = self.loop_ms(step)
            if self.device.type == "cuda":
                results["peak_train_gib"][backend] = torch.cuda.max_memory_allocated() / 2**30
            with torch.no_grad():
                results["prefill_ms"][backend] = self.loop_ms(lambda: model(ids, use_cache=True, logits_to_keep=1))
                results["forward_ms"][backend] = self.loop_ms(lambda: model(ids, use_cache=False))
                logits = model(ids, use_cache=False).logits.float()
            if reference is None:
                reference = logits
            results["logits_rel_diff"][backend] = ((logits - reference).norm() / reference.norm()).item()
            print(f"       {backend:6s} train step {results['train_step_ms'][backend]:9.2f} ms  prefill "
                  f"{results['prefill_ms'][backend]:9.2f} ms  forward {results['forward_ms'][backend]:9.2f} ms  "
                  f"logits rel diff {results['logits_rel_diff'][backend]:.1e}", flush=True)

    def loop_ms(self, fn) -> float:
        """Median of a few timed calls after one warm-up (device events on CUDA)."""
        if self.device.type != "cuda":
            return host_ms(fn, repeats=2, warmup=1)
        return cuda_ms(fn, repeats=self.args.iters, warmup=1)

    def check_selection(self):
        """Every op "auto" sends to Triton must be at least as fast as PyTorch in every measured row."""
        verdicts = self.report["selection"]
        for op in pk.OPS:
            rows = [r for r in self.report["kernels"] if r["op"] == op]
            if not rows:
                continue
            auto = op not in pk.AUTO_PREFERS_TORCH  # what "auto" does wherever Triton runs on CUDA
            slower = [f"{r['name']} {r['pass']}" for r in rows if r["triton_ms"] > r["torch_ms"]]
            verdicts[op] = dict(auto_uses_triton=auto, triton_slower_in=slower, ok=not (auto and slower))
            if auto and slower:
                print(f"[rule] auto routes {op} to Triton but it is slower in: {', '.join(slower)} -> add it to "
                      "AUTO_PREFERS_TORCH in src/photon_kernels/backend.py", flush=True)
            if not auto and not slower:
                print(f"[rule] auto keeps {op} on PyTorch but Triton is faster in every row -> consider removing it "
                      "from AUTO_PREFERS_TORCH", flush=True)

    # ---------------------------------------------------------------------------------------------- output
    def table(self) -> str:
        r = self.report
        lines = [f"Device: {r['device']}; torch {r['torch']}, triton {r['triton']}; {r['preset']}, {r['dtype']}, "
                 f"batch {r['batch']} x {r['seq']}",
                 "", "| kernel | shape | pass | PyTorch ms | Triton ms | speedup |", "|---|---|---|---|---|---|"]
        for r in self.report["kernels"]:
            lines.append(f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['pass']} | {r['torch_ms']:.3f} | "
                         f"{r['triton_ms']:.3f} | {r['speedup']:.2f}x |")
        e2e = self.report["end_to_end"]
        if e2e.get("train_step_ms"):
            lines += ["", f"| end to end (batch {e2e.get('batch')} x {self.report['seq']}) | torch ms | auto ms | "
                      "triton ms | auto speedup | triton speedup |", "|---|---|---|---|---|---|"]
            for key, label in (("train_step_ms", "training step (fwd+bwd)"), ("prefill_ms", "prefill (cache)"),
                               ("forward_ms", "forward, no grad")):
                values = e2e.get(key, {})
                base = values.get("torch")
                cells = [f"{values[b]:.2f}" if b in values else "-" for b in ("torch", "auto", "triton")]
                ratios = [f"{base / values[b]:.2f}x" if base and b in values else "-" for b in ("auto", "triton")]
                lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
        verdicts = self.report["selection"]
        if verdicts:
            bad = {op: v["triton_slower_in"] for op, v in verdicts.items() if not v["ok"]}
            verdict = f"PICKS SLOWER KERNELS {bad}" if bad else "ok (no op auto sends to Triton was slower in any row)"
            lines += ["", f"auto rule: {verdict}; kept on PyTorch: {sorted(pk.AUTO_PREFERS_TORCH)}"]
        if self.report["errors"] or self.report["skipped"]:
            lines += ["", f"failed sections: {[e['section'] for e in self.report['errors']]}; "
                      f"skipped: {self.report['skipped']}"]
        return "\n".join(lines)

    def run(self):
        reserve = 0 if self.args.quick else self.args.e2e_reserve_s
        self.section("kernels", 0, lambda: self.kernel_sections(reserve))
        self.section("end to end", 10 if self.args.quick else 25, self.end_to_end)
        self.section("selection check", 0, self.check_selection)
        self.report["elapsed_s"] = self.budget.elapsed()
        if self.args.out:
            with open(self.args.out, "w") as f:
                json.dump(self.report, f, indent=1)
        print("\n" + self.table())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="photon-600m")
    parser.add_argument("--batch", type=int, default=8, help="rows of the training step, prefill and kernel shapes")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per row")
    parser.add_argument("--decode-batch", type=int, default=1024, help="rows of the decode-attention benchmark")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--budget-s", type=float, default=150.0, help="wall-clock budget of the whole run")
    parser.add_argument("--e2e-reserve-s", type=float, default=70.0,
                        help="budget kept for the end-to-end section while the kernel section runs")
    parser.add_argument("--iters", type=int, default=5, help="timed end-to-end iterations (median)")
    parser.add_argument("--warmup-ms", type=float, default=10.0)
    parser.add_argument("--rep-ms", type=float, default=40.0)
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, Triton interpreter")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq = 2, 30
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --quick for the CPU smoke test")
    torch.manual_seed(0)
    KernelBench(args).run()


if __name__ == "__main__":
    main()
