#!/usr/bin/env python
"""PHOTON vs a same-size Llama through stock generate(): throughput, memory per sample, TPM and their ratios.

A thin wrapper around `photon_hf.benchmark.main` (also `photon-hf bench`); works from a checkout without installing
the package. Examples (docs/benchmarks.md has the full story):

    python bench/run_generation.py --preset cpu-smoke          # tiny models on the CPU, a minute or two
    python bench/run_generation.py --preset gpu-short          # the paper's 600M shapes, about 4 minutes of a GPU
    python bench/run_generation.py --profile --profile-batch 1024
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if (SRC / "photon_hf").is_dir():  # run from a checkout: use its code, installed or not
    sys.path.insert(0, str(SRC))

from photon_hf.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
