"""PHOTON's benchmarks, one folder per job, each with its scripts and its results (not installed with the package):

* `bench.generation`: throughput and memory of `generate()` against the same-shape Llama (BENCH.md), batch-1 decode
  latency, and the Triton compile check;
* `bench.quality`: quality at equal training compute against FLOP-matched Llamas (docs/quality.md);
* `bench.kernels`: each Triton kernel against the PyTorch path it replaces (docs/kernels.md);
* `bench.serving`: concurrent clients against `photon-hf serve` (docs/serving.md);
* `bench.vllm`: PHOTON and the same-size Llama in vLLM, chunked prefill at the model level, and what its packed CPU
  products save (docs/vllm.md);
* `bench.training`: peak memory of streamed against in-memory training, every launcher command of docs/training.md
  on two CPU processes, activation memory per token;
* `bench.common`: timing, budgets and run metadata shared by the jobs;
* `bench/gpu/`: the GPU shell scripts, one shared set-up (`env.sh`), and the logs of past device sessions.

Every figure a job reports about model cost (cache bytes, decode cost, training FLOPs, the Llama baselines) comes
from `photon_hf.memory`. Run the scripts as modules from the repository root, with the package installed
(`pip install -e .`) or through `bench/gpu/env.sh`, e.g. `python -m bench.generation.run_generation --preset
cpu-smoke`.
"""
