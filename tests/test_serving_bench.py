"""The serving benchmark (`bench.serving.run_serving`), end to end on a tiny model (structure and arithmetic, never
speed): one PHOTON server on 127.0.0.1, two streaming clients, the report and its plot."""

import json
import sys

import transformers
from packaging.version import Version

from bench.serving import run_serving

# transformers 5.25's server sends the tokens that are ready together, so a chunk may hold more than one there.
ONE_CHUNK_A_TOKEN = Version(transformers.__version__) < Version("5.25")


def test_summary_arithmetic():
    results = [dict(sent=0.0, first=0.1, end=1.0, chunks=3, gaps=[0.2, 0.3]),
               dict(sent=0.5, first=0.2, end=2.0, chunks=3, gaps=[0.4, 0.5])]
    summary = run_serving.summarize(results, new_tokens=3)
    assert summary["wall_s"] == 2.0 and summary["output_tokens_per_s"] == 3.0
    assert summary["requests_held_peak"] == 2
    assert abs(summary["token_latency_median_ms"] - 350) < 1e-9 and abs(summary["ttft_median_s"] - 0.15) < 1e-12


def test_the_figures_are_written_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    report = dict(clients=2, new_tokens=3, size="tiny", machine="cpu",
                  servers={"photon-cb": dict(output_tokens_per_s=5.0, ttft_median_s=0.1, token_latency_median_ms=9.0)})
    output = tmp_path / "serving.json"
    run_serving.write_report(report, output)
    assert json.loads(output.read_text()) == report
    assert not output.with_suffix(".png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_the_benchmark_runs_end_to_end(tmp_path):
    output = tmp_path / "serving.json"
    run_serving.main(["--size", "tiny", "--clients", "2", "--new-tokens", "3", "--servers", "photon-cb",
                      "--max-cache-len", "128", "--phases", "--phase-rows", "2", "--phase-steps", "4",
                      "--output", str(output)])
    report = json.loads(output.read_text())
    served = report["servers"]["photon-cb"]
    assert served["requests"] == 2 and len(served["per_request"]) == 2
    assert all(r["tokens"] == 3 for r in served["per_request"])  # every token streamed
    if ONE_CHUNK_A_TOKEN:  # each as it was made
        assert all(r["chunks"] == 3 for r in served["per_request"])
    else:
        assert all(1 <= r["chunks"] <= 3 for r in served["per_request"])
    assert served["cache_bytes_per_active_request"] > 0 and served["served_tpm"] > 0
    assert set(report["phases"]) >= {"aligned_step_ms", "mixed_step_ms", "mixed_over_aligned"}
    assert output.with_suffix(".png").stat().st_size > 0
