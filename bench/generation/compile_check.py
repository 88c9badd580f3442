"""Compile every kernel variant the 600M model uses for Hopper (sm_90) without a GPU, and report each one's
registers, spill stack and tensor-core instructions (HGMMA = Hopper wgmma; HMMA = the older mma path).

Triton ships ptxas and cuobjdump, so this needs no device: it catches compile errors before a GPU run and shows
which tile configs spill. It drives Triton's internal `triton.compile(ASTSource(...))`, checked with Triton 3.9.

    python -m bench.generation.compile_check [--dtype bf16 fp32]
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _module(name):
    return importlib.import_module(f"photon_kernels.{name}")


def compile_one(kernel, types: dict, constants: dict, config, label: str) -> bool:
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    constants = {**constants, **(config.kwargs if config else {})}
    signature = {a: "constexpr" if a in constants else types.get(a, "i32") for a in fn.arg_names}
    options = {"num_warps": config.num_warps if config else 4, "num_stages": config.num_stages if config else 2}
    try:
        compiled = triton.compile(ASTSource(fn, signature, constants), target=TARGET, options=options)
    except Exception as error:  # noqa: BLE001 - report every failing variant
        print(f"FAIL {label} {constants}: {type(error).__name__}: {str(error)[:2000]}")
        return False
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([f"{TOOLS}/cuobjdump", "-res-usage", cubin.name], capture_output=True, text=True).stdout
        sass = subprocess.run([f"{TOOLS}/cuobjdump", "-sass", cubin.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage).group(1)
    stack = re.search(r"STACK:(\d+)", usage).group(1)
    tiles = {k: v for k, v in constants.items() if k.startswith(("BLOCK", "GROUP_M"))}
    print(f"ok   {label:34s} warps={options['num_warps']:2d} stages={options['num_stages']} {tiles} "
          f"smem={compiled.metadata.shared} regs={regs} spill_stack={stack} HGMMA={sass.count('HGMMA')} "
          f"HMMA={sass.count('HMMA')} local_ld={sass.count('LDL')}")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", nargs="+", default=["bf16"], choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args()
    names = ("chunk_local_attention", "latent_attention", "decode_attention", "chunk_compress")
    local, latent, decode, compress = (_module(name) for name in names)
    head = dict(HEAD_DIM=52, HEAD_PAD=64)  # photon-600m: 1664 / 32 heads
    ok = True
    for dtype in args.dtype:
        ptr = f"*{dtype}"
        precision = "ieee" if dtype == "fp32" else "tf32"
        attn = {a: ptr for a in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")}
        attn.update(qk_scale="fp32", sm_scale="fp32", LSE="*fp32", DELTA="*fp32", ROWS="*i64", START="*i64",
                    END="*i64", PART_O="*fp32", PART_LSE="*fp32")
        jobs = []
        for config in local._FWD_CONFIGS["hopper"]:
            jobs.append((local._chunk_local_fwd, attn, dict(W=5, GROUP=1, **head), config, "chunk_local fwd"))
        for config in local._BWD_CONFIGS["hopper"]:
            jobs.append((local._chunk_local_bwd, attn, dict(W=5, GROUP=1, **head), config, "chunk_local bwd"))
        for windowed in (False, True):
            constants = dict(GROUP=1, WINDOWED=windowed, **head)
            for kernel, configs, name in ((latent._latent_fwd, latent._FWD_CONFIGS, "fwd"),
                                          (latent._latent_bwd_dkdv, latent._DKDV_CONFIGS, "dkdv"),
                                          (latent._latent_bwd_dq, latent._DQ_CONFIGS, "dq")):
                for config in configs["hopper"]:
                    jobs.append((kernel, attn, constants, config, f"latent {name} windowed={windowed}"))
        jobs.append((latent._latent_bwd_delta, attn, dict(BLOCK_M=64, **head), None, "latent delta"))
        for split in (False, True):
            for config in decode._CONFIGS["hopper"]:
                constants = dict(GROUP=1, GROUP_PAD=16, HAS_ROWS=True, SPLIT=split, **head)
                jobs.append((decode._decode_fwd, attn, constants, config, f"decode split={split}"))
        jobs.append((decode._decode_combine, attn, dict(SPLITS_PAD=8, **head), None, "decode combine"))
        rows = {a: ptr for a in ("X", "G", "W", "B", "Y", "H", "DH", "DX")}
        rows.update(RSTD="*fp32", DG_PART="*fp32", eps="fp32")
        for config in compress._GEMM_CONFIGS["hopper"]:
            jobs.append((compress._chunk_compress_fwd, rows, dict(HAS_BIAS=True), config, "chunk_compress fwd"))
        norm = triton.Config({}, num_warps=compress._norm_warps(8192))  # rows of 4 x 1664 = 6656 -> 8192
        jobs.append((compress._rms_norm_fwd, rows, dict(BLOCK_K=8192), norm, "rms_norm fwd"))
        jobs.append((compress._rms_norm_bwd, rows, dict(BLOCK_K=8192, WRITE_H=True), norm, "rms_norm bwd"))
        for kernel, types, constants, config, label in jobs:
            if "PRECISION" in (kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel).arg_names:
                constants = dict(constants, PRECISION=precision)
            ok &= compile_one(kernel, types, constants, config, f"{label} {dtype}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
