"""The scripts in examples/ run as documented (tiny settings, in this process)."""

import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(monkeypatch, script: str, *args: str):
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")


def test_examples_run(tmp_path, monkeypatch, capsys):
    model = tmp_path / "pretrained"
    _run(monkeypatch, "pretrain.py", "--output_dir", str(model), "--size", "tiny", "--max_files", "4",
         "--block_size", "64", "--max_eval_blocks", "4", "--max_steps", "3", "--per_device_train_batch_size", "4",
         "--per_device_eval_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none")
    assert (model / "model.safetensors").exists() and (model / "eval_results.json").exists()

    _run(monkeypatch, "finetune_lora.py", "--model", str(model), "--output_dir", str(tmp_path / "lora"),
         "--max_steps", "2", "--block_size", "64", "--max_files", "4", "--rank", "2", "--converter")
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").exists()
    difference = float(capsys.readouterr().out.split("merged)| = ")[1].split()[0])
    assert difference < 1e-4

    _run(monkeypatch, "export_for_hub.py", "--model", str(model), "--output", str(tmp_path / "hub"))
    assert (tmp_path / "hub" / "modeling_photon.py").exists() and (tmp_path / "hub" / "README.md").exists()

    _run(monkeypatch, "pipeline_generation.py", "--model", str(model), "--prompt", "def ", "--prompt", "import",
         "--max_new_tokens", "5")
    assert capsys.readouterr().out.count("---") == 2

    _run(monkeypatch, "stream_generation.py", "--model", str(model), "--max_new_tokens", "6")
    assert "PhotonCache after" in capsys.readouterr().out
