#!/usr/bin/env python
"""Print the markdown tables of a benchmark results JSON (and, with --plots, redraw its PNG plots).

python bench/report.py bench/results/gen_YYYYmmdd-HHMMSS_DEVICE.json [--plots]
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if (SRC / "photon_hf").is_dir():  # run from a checkout: use its code, installed or not
    sys.path.insert(0, str(SRC))

from photon_hf.benchmark import report_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(report_main())
