"""Training at scale (docs/training.md): `streaming_memory` measures the peak memory of streamed and in-memory
`photon-hf train` runs over generated corpora of growing size; `launchers` runs every launcher command of the docs on
two CPU processes and checks that each forms one job."""
