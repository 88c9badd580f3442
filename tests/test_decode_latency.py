"""`bench.generation.decode_latency` end to end on CPU with tiny shapes (the GPU run measures the 600M shapes)."""

import json

import torch

from bench.generation import decode_latency as module


def test_decode_latency_smoke(tmp_path, capsys):
    out = tmp_path / "latency.json"
    torch._dynamo.reset()
    try:
        code = module.main(["--preset", "tiny", "--contexts", "9", "--new-tokens", "3", "--repeats", "1",
                            "--device", "cpu", "--compile-backend", "eager", "--profile-batch", "2",
                            "--profile-context", "8", "--out", str(out)])
    finally:
        torch._dynamo.reset()
    assert code == 0
    report = json.loads(out.read_text())
    assert report["meta"]["errors"] == []
    latencies = {(r["model"], r["mode"], r["context"]) for r in report["rows"] if "ms_per_token" in r}
    assert latencies == {(m, mode, c) for m in ("photon", "llama") for mode in ("eager", "compiled") for c in (9,)}
    profiles = [r for r in report["rows"] if "wall_ms_per_step" in r]
    assert {r["model"] for r in profiles} == {"photon", "llama"} and all(r["wall_ms_per_step"] > 0 for r in profiles)
    printed = capsys.readouterr().out
    assert "| PHOTON | compiled |" in printed and "| Llama | eager |" in printed
