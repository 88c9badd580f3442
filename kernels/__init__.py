"""Triton kernels for PHOTON (installed as `photon_kernels`). Filled in by the kernels work."""
