"""The kernel benchmark (docs/kernels.md): `bench_kernels` times each Triton kernel against the PyTorch path it
replaces, and the 600M training step and prefill with and without kernels."""
