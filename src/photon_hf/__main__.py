"""`python -m photon_hf ...` is the `photon-hf` command (handy under `accelerate launch -m photon_hf train ...`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
