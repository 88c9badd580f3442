"""The generation benchmark (BENCH.md, docs/benchmarks.md): `run_generation` drives `harness` over the regimes of
`protocol` and writes the JSON, table and plots of `report`; `decode_latency` measures batch-1 decode latency, eager
against compiled; `compile_check` compiles every Triton kernel for a GPU target without one."""
