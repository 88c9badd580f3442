#!/usr/bin/env python
"""Reports of the generation benchmark: the markdown tables and the PNG plots of a results JSON.

A run (`bench.generation.run_generation`) prints the tables and draws the plots itself; this script redraws them
from a JSON it wrote:

    python -m bench.generation.report bench/generation/results/gen_YYYYmmdd-HHMMSS_DEVICE.json [--plots]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bench.generation.protocol import LABELS, MODELS


def fmt(value, spec: str = ".3g", none: str = "–") -> str:
    """Format a figure for the tables; spec "n" gives 4 significant digits without exponents (12,345 or 0.0123)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    if spec == "n":
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return format(value, spec)



def render_markdown(results: dict, json_path: str | None = None) -> str:
    """The markdown summary of a results JSON (what this script prints, and what a run prints last)."""
    meta, records = results["meta"], results["records"]
    versions = meta.get("versions", {})
    out = [
        f"## PHOTON vs Llama generation: {meta.get('device')} ({meta.get('dtype')}, torch {versions.get('torch')}, "
        f"transformers {versions.get('transformers')}, preset {meta.get('preset')}, {meta.get('shape')})",
        "",
    ]
    gen = [r for r in records if r["record_type"] == "generation"]
    attempts = [r for r in records if r["record_type"] == "attempt"]
    regimes = list(
        dict.fromkeys(r["regime"] for r in gen + [a for a in attempts if a["regime"] not in ("sweep", "profile")])
    )
    if regimes:
        out += [
            "Largest batch that ran per model. TPM = K tok/s / GiB per sample; ratio = PHOTON / Llama (same run).",
            "",
            "| regime | model | batch | K tok/s | ms/step | GiB/sample | KV GiB/sample (analytic) | TPM | x roofline |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for regime in regimes:
            rows = [r for r in gen if r["regime"] == regime and r.get("is_max_batch")]
            for r in sorted(rows, key=lambda r: MODELS.index(r["model"])):
                out.append(
                    f"| {regime} {r['prompt_len']}/{r['gen_len']} | {LABELS[r['model']]} | {r['batch_size']} | "
                    f"{fmt(r['tok_per_s'] / 1e3, '.3g')} | {fmt(r.get('decode_step_ms'), '.3g')} | "
                    f"{fmt(r['per_sample_gib'], '.4g')} | {fmt(r['analytic_kv_gib'], '.4g')} | "
                    f"{fmt(r['tpm'], 'n')} | {fmt(r.get('step_over_roofline'), '.1f')} |"
                )
            ratio = next(
                (
                    x
                    for x in records
                    if x["record_type"] == "ratio" and x["regime"] == regime and x["basis"] == "max_batch"
                ),
                None,
            )
            if ratio:
                out.append(
                    f"| {regime} | **ratio P/L** | {ratio['photon_batch']}/{ratio['llama_batch']} | "
                    f"**{fmt(ratio['tok_per_s_ratio'], '.3g')}x** | {fmt(ratio['decode_step_ms_ratio'], '.3g')}x | "
                    f"{fmt(ratio['per_sample_gib_ratio'], '.3g')}x | {fmt(ratio['analytic_kv_gib_ratio'], '.3g')}x | "
                    f"**{fmt(ratio['tpm_ratio'], 'n')}x** | |"
                )
        out += [
            "",
            "Throughput by batch (K tok/s; OOM / budget where a model stopped):",
            "",
            "| regime | batch | PHOTON | Llama | P/L |",
            "|---|---:|---:|---:|---:|",
        ]
        for regime in regimes:
            cells: dict[int, dict[str, str]] = {}
            values: dict[int, dict[str, float]] = {}
            for r in gen + attempts:
                if r["regime"] != regime:
                    continue
                ok = r["record_type"] == "generation"
                cells.setdefault(r["batch_size"], {})[r["model"]] = (
                    fmt(r["tok_per_s"] / 1e3, ".3g") if ok else r["status"].replace("skipped_", "")
                )
                if ok:
                    values.setdefault(r["batch_size"], {})[r["model"]] = r["tok_per_s"]
            for batch in sorted(cells):
                v = values.get(batch, {})
                ratio = v["photon"] / v["llama"] if "photon" in v and "llama" in v else None
                out.append(
                    f"| {regime} | {batch} | {cells[batch].get('photon', '')} | {cells[batch].get('llama', '')} | "
                    f"{fmt(ratio, '.3g', '')} |"
                )
        out.append("")
    sweep = [r for r in records if r["record_type"] == "sweep"]
    if sweep:
        out += [
            "Context sweep (ms/token = decode latency per generated token; K tok/s and TPM include the prefill, "
            "TPM decode does not):",
            "",
            "| context | model | b=1 ms/token | batch | ms/token | K tok/s | GiB/sample | KV GiB analytic "
            "| KV GiB measured | TPM | TPM decode |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for context in sorted({r["prompt_len"] for r in sweep}):
            for name in MODELS:
                rows = sorted(
                    (r for r in sweep if r["prompt_len"] == context and r["model"] == name),
                    key=lambda r: r["batch_size"],
                )
                if not rows:
                    continue
                one, big = rows[0], rows[-1]
                out.append(
                    f"| {context} | {LABELS[name]} | {fmt(one['decode_ms_per_token'], '.3g')} | {big['batch_size']} | "
                    f"{fmt(big['decode_ms_per_token'], '.3g')} | {fmt(big['tok_per_s'] / 1e3, '.3g')} | "
                    f"{fmt(big['per_sample_gib'], '.4g')} | {fmt(big['analytic_kv_gib'], '.4g')} | "
                    f"{fmt(big['cache_gib_measured'], '.4g')} | {fmt(big['tpm'], 'n')} | "
                    f"{fmt(big.get('decode_tpm'), 'n')} |"
                )
        out.append("")
    profiles = [r for r in records if r["record_type"] == "profile"]
    if profiles:
        out += [
            "Profile, per decode step (difference of generate with 1 + N and 1 new tokens; GPU = kernel time; "
            "idle = wall - GPU):",
            "",
            "| model | batch | wall ms | GPU ms | idle ms | roofline ms | kernels | aten calls | top GPU op "
            "| top CPU op |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in profiles:
            top_gpu = r["top_gpu_ops"][0] if r["top_gpu_ops"] else None
            top_cpu = r["top_cpu_ops"][0] if r["top_cpu_ops"] else None
            out.append(
                f"| {LABELS[r['model']]} | {r['batch_size']} | {r['wall_step_ms']:.2f} | "
                f"{fmt(r['gpu_busy_step_ms'], '.2f')} | {fmt(r['gpu_idle_step_ms'], '.2f')} | "
                f"{fmt(r['roofline_step_ms'], '.3g')} | {fmt(r['kernels_per_step'], '.0f')} | "
                f"{r['op_calls_per_step']:.0f} | "
                + (f"{top_gpu['op']} {top_gpu['self_gpu_us'] / 1e3:.2f} ms | " if top_gpu else "– | ")
                + (f"{top_cpu['op']} {top_cpu['self_cpu_us'] / 1e3:.2f} ms |" if top_cpu else "– |")
            )
        out.append("")
        for r in profiles:  # the next few ops, per step: where a shortfall comes from
            for kind, key, unit in (("GPU", "self_gpu_us", "top_gpu_ops"), ("CPU", "self_cpu_us", "top_cpu_ops")):
                ops = ", ".join(
                    f"{op['op'].replace('aten::', '')} {op[key] / 1e3:.2f} ms ({op['calls']:.0f}x)"
                    for op in r[unit][:5]
                )
                if ops:
                    out.append(f"- {LABELS[r['model']]} top {kind} per step: {ops}")
        out.append("")
    ceilings = meta.get("ceilings")
    if ceilings:
        out.append(
            f"Ceilings measured in this run: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, matmul "
            f"{ceilings['matmul_flop_per_s'] / 1e12:.0f} TFLOP/s."
        )
    sections = ", ".join(f"{k} {v['status']} {v['seconds']:.0f}s" for k, v in meta.get("sections", {}).items())
    out.append(
        f"Sections: {sections or 'none'}; wall {meta.get('wall_s', 0):.0f} s"
        + ("; INTERRUPTED" if meta.get("interrupted") else "")
        + "."
    )
    for error in meta.get("errors", []):
        out.append(f"- error: {error}")
    if json_path:
        out.append(f"JSON: {json_path}" + (f"; plots: {', '.join(meta['plots'])}" if meta.get("plots") else ""))
    return "\n".join(out)


def make_plots(results: dict, stem: str) -> list[str]:
    """Throughput against batch (per regime) and memory / TPM / latency against context length, as PNG files
    `{stem}_batch.png` and `{stem}_context.png`. Returns the paths written ([] without matplotlib or data)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed: no plots. Install it (pip install matplotlib, or the checkout's "
            "'.[bench]' extra) and redraw them with: python -m bench.generation.report RESULTS.json --plots",
            flush=True,
        )
        return []
    records, meta = results["records"], results["meta"]
    colors = {"photon": "tab:blue", "llama": "tab:orange"}
    written = []
    title = f"{meta.get('device')} · {meta.get('dtype')} · {meta.get('shape')}"
    gen = [r for r in records if r["record_type"] == "generation"]
    attempts = [r for r in records if r["record_type"] == "attempt"]
    regimes = list(dict.fromkeys(r["regime"] for r in gen))
    if regimes:
        fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 4.2), squeeze=False)
        for ax, regime in zip(axes[0], regimes, strict=True):
            for name in MODELS:
                rows = sorted(
                    (r for r in gen if r["regime"] == regime and r["model"] == name), key=lambda r: r["batch_size"]
                )
                if rows:
                    ax.plot(
                        [r["batch_size"] for r in rows],
                        [r["tok_per_s"] / 1e3 for r in rows],
                        "o-",
                        color=colors[name],
                        label=LABELS[name],
                    )
                for fail in (r for r in attempts if r["regime"] == regime and r["model"] == name):
                    ax.axvline(fail["batch_size"], color=colors[name], ls=":", lw=1)
                    ax.annotate(
                        f"{LABELS[name]} {fail['status'].replace('skipped_', '')}",
                        (fail["batch_size"], 0.02),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        fontsize=7,
                        color=colors[name],
                    )
            ratio = next(
                (
                    x
                    for x in records
                    if x["record_type"] == "ratio" and x["regime"] == regime and x["basis"] == "max_batch"
                ),
                None,
            )
            sample = next(r for r in gen if r["regime"] == regime)
            subtitle = f"{regime} {sample['prompt_len']}/{sample['gen_len']}"
            if ratio and ratio.get("tpm_ratio"):
                subtitle += f"\nTPM P/L {ratio['tpm_ratio']:.0f}x, throughput {ratio['tok_per_s_ratio']:.1f}x"
            ax.set(
                xscale="log", yscale="log", xlabel="batch size", ylabel="K tokens/s (prefill included)", title=subtitle
            )
            _log_ticks(ax.xaxis, sorted({r["batch_size"] for r in gen + attempts if r["regime"] == regime}))
            _plain_labels(ax.yaxis)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle(f"Throughput vs batch · {title}", fontsize=10)
        fig.tight_layout()
        path = f"{stem}_batch.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    sweep = [r for r in records if r["record_type"] == "sweep"]
    if sweep:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
        for name in MODELS:
            rows = [r for r in sweep if r["model"] == name]
            contexts = sorted({r["prompt_len"] for r in rows})
            big = [max((r for r in rows if r["prompt_len"] == c), key=lambda r: r["batch_size"]) for c in contexts]
            one = [next((r for r in rows if r["prompt_len"] == c and r["batch_size"] == 1), None) for c in contexts]
            measured = [(c, r["per_sample_gib"]) for c, r in zip(contexts, big, strict=True) if r["per_sample_gib"]]
            if measured:
                axes[0].plot(
                    *zip(*measured, strict=True), "o-", color=colors[name], label=f"{LABELS[name]} measured (slope)"
                )
            axes[0].plot(
                contexts,
                [r["analytic_kv_gib"] for r in big],
                "x--",
                color=colors[name],
                label=f"{LABELS[name]} analytic KV",
            )
            tpm = [(c, r["tpm"], r["batch_size"]) for c, r in zip(contexts, big, strict=True) if r["tpm"]]
            if tpm:
                axes[1].plot(
                    [t[0] for t in tpm],
                    [t[1] for t in tpm],
                    "o-",
                    color=colors[name],
                    label=f"{LABELS[name]} (prefill included)",
                )
                for c, value, batch in tpm:
                    axes[1].annotate(
                        f"b={batch}",
                        (c, value),
                        xytext=(4, 4),
                        textcoords="offset points",
                        fontsize=7,
                        color=colors[name],
                    )
            decode = [(c, r["decode_tpm"]) for c, r in zip(contexts, big, strict=True) if r.get("decode_tpm")]
            if decode:
                axes[1].plot(
                    *zip(*decode, strict=True), "s:", color=colors[name], label=f"{LABELS[name]} (decode only)"
                )
            latency = [(c, r["decode_ms_per_token"]) for c, r in zip(contexts, one, strict=True) if r is not None]
            if latency:
                axes[2].plot(*zip(*latency, strict=True), "o-", color=colors[name], label=LABELS[name])
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel="prompt tokens",
            ylabel="GiB per sample",
            title="Memory per sample vs context",
        )
        axes[1].set(
            xscale="log",
            yscale="log",
            xlabel="prompt tokens",
            ylabel="TPM (K tok/s per GiB)",
            title=f"TPM vs context (sweep batch, {sweep[0]['gen_len']} generated)",
        )
        axes[2].set(
            xscale="log",
            yscale="log",
            xlabel="prompt tokens",
            ylabel="ms per generated token",
            title="Decode latency at batch 1",
        )
        for ax in axes:
            _log_ticks(ax.xaxis, sorted({r["prompt_len"] for r in sweep}))
            _plain_labels(ax.yaxis)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Context sweep · {title}", fontsize=10)
        fig.tight_layout()
        path = f"{stem}_context.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _log_ticks(axis, values: list[int]):
    """Label a log axis with the plain values that were measured (no 2 x 10^0 style labels)."""
    import matplotlib.ticker

    axis.set_major_locator(matplotlib.ticker.FixedLocator(values))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if v < 1e4 else f"{v / 1024:g}K"))
    axis.set_minor_locator(matplotlib.ticker.NullLocator())


def _plain_labels(axis):
    """Ticks at 1, 2, 5 x 10^k labelled as plain numbers (0.5, 2, 300) on a log axis."""
    import matplotlib.ticker

    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 10 else f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())



def main(argv: list[str] | None = None) -> int:
    """`python -m bench.generation.report RESULTS.json [--plots]`: print the markdown tables of a results JSON (and
    redraw its plots)."""
    parser = argparse.ArgumentParser(
        description="Render the markdown tables (and optionally the plots) of a results JSON."
    )
    parser.add_argument("json", help="a results file written by the benchmark")
    parser.add_argument("--plots", action="store_true", help="(re)draw the PNG plots beside the JSON")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.json).read_text())
    if args.plots:
        results["meta"]["plots"] = make_plots(results, str(Path(args.json).with_suffix("")))
    print(render_markdown(results, args.json))
    return 0



if __name__ == "__main__":
    sys.exit(main())
