"""The `photon-hf` console script: the command line of `photon_hf.cli`, parsed before torch is imported.

`import photon_hf` imports torch and transformers and registers PHOTON with the Auto classes and PEFT, which takes
seconds; a help text or a usage error should not wait for it. So the script makes the package importable without
running its `__init__.py` and imports `photon_hf.cli`, which imports only plain-Python modules at the top; a command
handler runs `__init__.py` (`photon_hf.cli._load_package`) once its arguments are checked. `python -m photon_hf` is
the same command line with the package imported first.
"""

import importlib.util
import sys


def main(argv: list[str] | None = None) -> int:
    if "photon_hf" not in sys.modules:
        spec = importlib.util.find_spec("photon_hf")
        sys.modules["photon_hf"] = importlib.util.module_from_spec(spec)  # __init__.py not run yet
    from photon_hf.cli import main as cli_main

    return cli_main(argv)
