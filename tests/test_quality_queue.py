"""The quality queue's rate pick: the best short run on the selection split, the sweep extended past a winning edge."""

import json

import pytest

from bench.quality import queue, study


def test_the_rate_pick_extends_the_sweep_past_a_winning_edge(tmp_path, monkeypatch):
    results = tmp_path / "short.jsonl"
    made = []

    def fake_sweep(argv):  # records every planned run not made yet; on the selection split 4e-3 is best
        args = study.parse_args(argv)
        with results.open("a") as f:
            for key in study.planned_runs(args):
                if study.run_key(key) not in {study.run_key(r) for r in study.load_results(results)} | set(made):
                    made.append(study.run_key(key))
                    bits = 2.0 + abs(key["lr"] - 4e-3) * 100
                    f.write(json.dumps({**key, "valid_bits_per_byte": 0.0, "selection_bits_per_byte": bits}) + "\n")

    monkeypatch.setattr(study, "main", fake_sweep)
    step = queue.Step("test", [], tmp_path / "long.jsonl", pick=[1e-3, 2e-3],
                      pick_args=["--widths", "32", "--models", "photon", "--steps", "3"], pick_results=results)
    assert queue.pick_rate(step, run=False) is None  # nothing run yet
    assert queue.pick_rate(step) == 4e-3
    assert sorted(r["lr"] for r in study.load_results(results)) == [1e-3, 2e-3, 4e-3, 8e-3]  # 4e-3 bracketed
    assert queue.pick_rate(step, run=False) == 4e-3  # picked again from the same results, nothing rerun
    assert len(made) == 4


def test_run_only_makes_the_named_steps_and_refuses_an_unknown_name(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(study, "main", lambda argv: ran.append(argv[argv.index("--results") + 1]))
    monkeypatch.setattr(queue, "write_tables", lambda: None)
    monkeypatch.setattr(queue, "BPE", tmp_path)  # the tokenizer exists: nothing to train
    monkeypatch.setattr(queue, "steps", lambda: [queue.Step(name, ["--steps", "3"], tmp_path / f"{name}.jsonl")
                                                 for name in ("first", "second", "third")])
    queue.main(["run", "--only", "third", "first"])
    assert ran == [str(tmp_path / "first.jsonl"), str(tmp_path / "third.jsonl")]  # the queue's order
    with pytest.raises(SystemExit) as stop:
        queue.main(["run", "--only", "fourth"])
    assert stop.value.code == 2 and len(ran) == 2  # refused before anything ran
