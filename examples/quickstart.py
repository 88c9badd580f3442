"""The README's main job as a script: `python examples/quickstart.py [--minutes 3]` is `photon-hf quickstart`.

Trains a small PHOTON on the Python standard library's source with `transformers.Trainer`, saves it in Hugging
Face format, loads it back with `AutoModelForCausalLM`, generates, and prints its cache memory beside a same-size
Llama. See `photon-hf quickstart --help` for the options.
"""

import sys

from photon_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))
