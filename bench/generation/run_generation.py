#!/usr/bin/env python
"""PHOTON vs a same-size Llama through stock generate(): throughput, memory per sample, TPM and their ratios.

The entry point of the generation benchmark (protocol: `bench.generation.protocol` and BENCH.md; harness:
`bench.generation.harness`; tables and plots: `bench.generation.report`). Run from the repository root, with the
package installed (or `bench/gpu/env.sh` on a bare machine). Examples (docs/benchmarks.md has the full story):

    python -m bench.generation.run_generation --preset cpu-smoke    # tiny models on the CPU, a minute or two
    python -m bench.generation.run_generation --preset gpu-short    # the paper's 600M shapes, about 4 minutes of a GPU
    python -m bench.generation.run_generation --profile --profile-batch 1024
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.generation.harness import run
from bench.generation.protocol import RUN_PRESETS, SECTIONS, parse_regime
from photon_hf import PHOTON_PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generation.run_generation",
        description="PHOTON vs a same-size Llama through the same stock generate(): throughput, memory per sample, "
        "TPM and their ratios (BENCH.md protocol). Options left out come from the preset.",
    )
    parser.add_argument("--preset", choices=sorted(RUN_PRESETS), help="defaults: gpu-short on CUDA, else cpu-smoke")
    parser.add_argument(
        "--shape",
        choices=list(PHOTON_PRESETS),
        help="PHOTON's shape, a photon_hf.PHOTON_PRESETS name (the Llama is sized to match): photon-600m is the "
        "paper's, tiny a CPU smoke test",
    )
    parser.add_argument(
        "--kernel-backend",
        choices=["auto", "torch", "triton"],
        default="auto",
        help="PHOTON's kernel_backend: auto (Triton kernels on CUDA when importable), torch or triton",
    )
    parser.add_argument(
        "--decode",
        choices=["auto", "eager"],
        default="auto",
        help="auto (default): what generate does by itself (on a GPU PHOTON's decode step compiles into CUDA graphs; "
        "the Llama's dynamic cache decodes eagerly); eager: disable_compile=True for both",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget of all sections (set-up not included)")
    parser.add_argument(
        "--regime",
        dest="regimes",
        action="append",
        type=parse_regime,
        metavar="NAME=P/G[:B,...]",
        help="a regime (repeatable): prompt/generated lengths, optionally a fixed batch ladder "
        "(else search the largest batch). Replaces the preset's regimes.",
    )
    parser.add_argument("--search-start", type=int, help="first batch size of the batch search")
    parser.add_argument("--max-batch", type=int, help="largest batch size the search tries")
    parser.add_argument("--repeats", type=int, help="timed generate calls per batch size (median)")
    parser.add_argument(
        "--sections",
        type=lambda s: [x for x in s.split(",") if x],
        metavar="LIST",
        help=f"comma list of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--profile", action="store_true", help="profiler mode: run only the profile section")
    parser.add_argument("--profile-batch", type=int, help="batch size of the profiled generations")
    parser.add_argument(
        "--profile-steps",
        type=int,
        help="decode steps profiled, N (a multiple of the meta-chunk, 16, covers every PHOTON step kind)",
    )
    parser.add_argument(
        "--sweep-contexts",
        type=lambda s: [int(x) for x in s.split(",") if x],
        metavar="LIST",
        help="comma list of prompt lengths for the context sweep",
    )
    parser.add_argument("--sweep-batch", type=int, help="the sweep's large batch (halved while it does not fit)")
    parser.add_argument("--sweep-gen", type=int, help="tokens generated at each sweep point (>= 2)")
    parser.add_argument("--out-dir", default="bench/generation/results",
                        help="where the JSON and plots go (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompts (default: %(default)s)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset is None:
        args.preset = "gpu-short" if torch.device(args.device).type == "cuda" else "cpu-smoke"
    preset = RUN_PRESETS[args.preset]
    for key, value in preset.items():
        if key == "weights":
            continue
        if getattr(args, key, None) is None:
            setattr(args, key, [parse_regime(v) for v in value] if key == "regimes" else value)
    if args.profile:
        args.sections = ["profile"]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    names = [r.name for r in args.regimes]
    if len(set(names)) != len(names) or set(names) & set(SECTIONS):
        parser.error(f"regime names must be distinct and not one of {SECTIONS}: {names}")
    if args.sweep_gen < 2 or args.profile_steps < 1 or args.repeats < 1 or args.max_batch < 1:
        parser.error("--sweep-gen must be >= 2, --profile-steps, --repeats and --max-batch >= 1")
    args.weights = {**{r.name: 1.0 for r in args.regimes}, "profile": 0.5, "sweep": 1.0, **preset["weights"]}
    args.out_stem = None
    return args


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.generation.run_generation ARGS`. Returns 0 when at least one generation was measured."""
    _, results = run(parse_args(argv))
    return 0 if any(r.get("status") == "ok" for r in results["records"]) else 1


if __name__ == "__main__":
    sys.exit(main())
