"""The `photon-hf` command line: help texts, info, a tiny train -> generate -> export round trip, resume, LoRA,
the quickstart on a tiny budget, and errors that say what to change (each mistake through the console script)."""

import dataclasses
import json
import os
import subprocess

import pytest
import torch
from helpers import console_script
from train_helpers import run_python

from photon_hf import cli, kv_cache_bytes, llama_kv_cache_bytes
from photon_hf.memory import format_bytes
from photon_hf.training import TrainJob, model_config

COMMANDS = ("quickstart", "train", "generate", "export", "info")
TINY_TRAIN = ["--size", "tiny", "--max-files", "6", "--block-size", "64", "--batch-size", "4", "--eval-blocks", "4",
              "--logging-steps", "1"]


def test_help_of_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
    # The benchmarks are scripts (modules of bench/), not commands.
    assert "bench.generation.run_generation" in text and "  bench " not in text
    assert "photon-hf quickstart" in text
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: photon-hf {command}" in text and "example" in text
    assert cli.main([]) == 2  # no command: the overview, and a usage exit code


LIGHT = """
import sys
from photon_hf_cli import main

calls = [["--help"], *([command, "--help"] for command in COMMANDS)]
mistakes = [["generate", "--model", "x", "--prompt", ""], ["generate", "--model", "./runs/missing"],
            ["info", "--size", "huge"], ["train", "--output-dir", "out", "--block-size", "1"], ["export", "a", "b",
            "--push-to-hub"], []]
for argv in calls + mistakes:
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    assert code == (0 if argv in calls else 2), (argv, code)
heavy = sorted({"torch", "transformers", "peft", "datasets", "accelerate"} & set(sys.modules))
assert not heavy, f"imported {heavy}"
"""


def test_help_and_usage_errors_import_no_torch():
    """The console script answers `--help`, `COMMAND --help` and usage mistakes without importing torch,
    transformers or peft (the time that takes belongs in benchmarks, not here)."""
    run_python(f"COMMANDS = {(*COMMANDS, 'serve')!r}\n" + LIGHT)


def test_train_options_are_the_train_job_fields():
    """`photon-hf train` has one option per `TrainJob` field, with the field's default: parsing only the required
    option gives the default job, and each option sets its field."""
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--output-dir", "out"])
    assert cli._train_job(args) == TrainJob(output_dir="out")
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for field in dataclasses.fields(TrainJob):
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        assert flag in help_text, flag
    argv = ["train", "--output-dir", "out", "--max-steps", "7", "--warmup", "0.5", "--size", "tiny", "--adam-beta2",
            "0.9", "--max-files", "3", "--no-save-checkpoints", "--bf16", "--lora-chunker", "--set", "hidden_size=96"]
    job = cli._train_job(parser.parse_args(argv))
    assert job == TrainJob(output_dir="out", max_steps=7, warmup=0.5, size="tiny", adam_beta2=0.9, max_files=3,
                           save_checkpoints=False, bf16=True, lora_chunker=True, overrides={"hidden_size": 96})
    assert cli._train_job(parser.parse_args(["train", "--output-dir", "out", "--resume"])).resume == "last"


def test_console_script_and_module_entry_points():
    result = subprocess.run([console_script(), "info", "--size", "tiny"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout
    result = run_python(
        "import runpy, sys; sys.argv = ['photon_hf', '--help']; runpy.run_module('photon_hf', run_name='__main__')"
    )
    assert "usage: photon-hf" in result.stdout


def test_info_prints_parameters_and_cache_table(capsys):
    assert cli.main(["info", "--size", "photon-600m", "--context-lengths", "2048,32768"]) == 0
    text = capsys.readouterr().out
    assert "646,400,768" in text  # the paper's 600M shape (see DESIGN.md)
    config = model_config("photon-600m")
    for n in (2048, 32768):
        photon = format_bytes(kv_cache_bytes(config, n))
        llama = format_bytes(llama_kv_cache_bytes(config, n))
        assert any(f"{n:,}" in line and photon in line and llama in line for line in text.splitlines()), (n, text)
    assert cli.main(["info", "--size", "tiny", "--set", "encoder_windows=[8,null]", "--dtype", "fp32",
                     "--batch-size", "4", "--context-lengths", "4096"]) == 0
    text = capsys.readouterr().out
    windowed = model_config("tiny", encoder_windows=[8, None])
    assert format_bytes(4 * kv_cache_bytes(windowed, 4096, dtype=torch.float32)) in text


def test_train_generate_export_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--output-dir", str(run), *TINY_TRAIN, "--max-steps", "4", "--eval-steps", "2",
                     "--save-steps", "2"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval_results.json", "photon_training.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "eval_results.json").read_text())
    assert metrics["eval_loss"] < 5.6 and "eval_perplexity" in metrics
    info = json.loads((run / "photon_training.json").read_text())
    assert "standard library" in info["training_data"] and info["train_steps"] == 4

    # Resuming continues the same run from its last checkpoint.
    assert cli.main(["train", "--output-dir", str(run), *TINY_TRAIN, "--max-steps", "6", "--eval-steps", "2",
                     "--save-steps", "2", "--resume"]) == 0
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and any(e.get("step") == 5 for e in state["log_history"])
    assert not any(e.get("step") == 1 and "loss" in e for e in state["log_history"][4:])
    capsys.readouterr()

    assert cli.main(["generate", "--model", str(run), "--prompt", "def ", "--prompt", "import",
                     "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    assert "--- 'def '" in text and "--- 'import'" in text
    assert cli.main(["generate", "--model", str(run), "--max-new-tokens", "6", "--sample"]) == 0

    assert cli.main(["info", str(run), "--context-lengths", "1024"]) == 0
    assert "vocabulary         259" in capsys.readouterr().out

    hub = tmp_path / "hub"
    metrics = json.loads((run / "eval_results.json").read_text())  # rewritten by the resumed run
    assert cli.main(["export", str(run), str(hub), "--repo-id", "someone/tiny"]) == 0
    card = (hub / "README.md").read_text()
    assert f"| loss (nats/token) | {metrics['eval_loss']:.4f} |" in card
    assert "standard library" in card and "someone/tiny" in card
    assert json.loads((hub / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]

    # LoRA fine-tuning of the saved model: an adapter folder, and the merged model at the top.
    lora = tmp_path / "lora"
    assert cli.main(["train", "--output-dir", str(lora), "--model", str(run), *TINY_TRAIN[2:], "--max-steps", "2",
                     "--eval-steps", "2", "--save-steps", "2", "--lora-r", "4"]) == 0
    assert (lora / "adapter" / "adapter_config.json").exists()
    assert (lora / "model.safetensors").exists() and not (lora / "adapter_config.json").exists()


def test_errors_say_what_to_change(tmp_path, capsys):
    assert cli.main(["train", "--output-dir", str(tmp_path), "--lora-r", "4"]) == 2
    assert "--model PATH" in capsys.readouterr().err
    assert cli.main(["train", "--output-dir", str(tmp_path / "new"), "--resume", *TINY_TRAIN]) == 2
    assert "drop --resume" in capsys.readouterr().err
    assert cli.main(["train", "--output-dir", str(tmp_path / "new"), "--block-size", "1"]) == 2  # TrainJob's check
    assert "`block_size` (--block-size) must be an int >= 2, got 1" in capsys.readouterr().err
    assert cli.main(["train", "--output-dir", str(tmp_path / "new"), "--streaming"]) == 2
    assert "(--max-steps) is required with `streaming` (--streaming)" in capsys.readouterr().err
    single = tmp_path / "one.txt"  # one document: nothing to hold out; the error names the flag that fixes it
    single.write_text("a single document")
    assert cli.main(["train", "--output-dir", str(tmp_path / "new"), "--dataset", str(single), "--size", "tiny"]) == 1
    assert "--validation-data" in capsys.readouterr().err
    assert cli.main(["train", "--output-dir", str(tmp_path / "new"), "--model", str(tmp_path)]) == 2
    assert "without a config.json" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert cli.main(["generate", "--model", str(tmp_path / "folder")]) == 2
    assert "without a config.json" in capsys.readouterr().err
    assert cli.main(["info", "--size", "tiny", "--set", "hidden_size"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["info", "--size", "tiny", "--set", "hidden_size=30"]) == 2  # a config error, explained
    assert "num_attention_heads" in capsys.readouterr().err
    assert cli.main(["train", "--output-dir", str(tmp_path / "new"), "--set", "chunk_sizes=[]"]) == 2
    assert "`chunk_sizes` must be a non-empty list" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "missing"), str(tmp_path / "out"), "--push-to-hub"]) == 2
    assert "--repo-id" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err


# Each mistake through the console script, as a user makes it; all of them are answered before a model is loaded
# (the model name does not exist, so a check made after loading would fail differently). The processes start
# together: most of their time is importing torch and transformers.
MISTAKES = {
    "hub_name_unreachable": (["generate", "--model", "no-such-model"], "could not be reached", {}),
    "hub_name_offline": (["generate", "--model", "no-such-model"], "offline mode", {"HF_HUB_OFFLINE": "1"}),
    "local_path": (["generate", "--model", "./runs/missing"], "'./runs/missing': no such folder", {}),
    "info_name": (["info", "no-such-dir"], "'no-such-dir' is not a local folder", {}),
    "num_beams": (["generate", "--model", "no-such-model", "--num-beams", "0"], "--num-beams: expected an integer", {}),
    "max_new_tokens": (["generate", "--model", "x", "--max-new-tokens", "0"], "--max-new-tokens: expected an", {}),
    "top_k": (["generate", "--model", "x", "--top-k", "-1"], "--top-k: expected an integer >= 0", {}),
    "top_p": (["generate", "--model", "x", "--top-p", "1.5"], "--top-p: expected a number in (0, 1]", {}),
    "temperature": (["generate", "--model", "x", "--temperature", "0"], "--temperature: expected a number > 0", {}),
    "repetition_penalty": (["generate", "--model", "x", "--repetition-penalty", "-1"], "--repetition-penalty", {}),
    "empty_prompt": (["generate", "--model", "x", "--prompt", ""], "--prompt: expected a non-empty prompt", {}),
    "serve_folder": (["serve", "./runs/missing"], "MODEL './runs/missing': no such folder", {}),
    "serve_batch": (["serve", "x", "--max-batch-size", "0"], "--max-batch-size: expected an integer", {}),
}


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("mistakes")
    # No network in the tests: a Hub endpoint that refuses connections at once stands for "no network".
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(cwd / "hf")}
    processes = {
        name: subprocess.Popen([console_script(), *argv], cwd=cwd, env={**env, **extra}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (argv, _, extra) in MISTAKES.items()
    }
    return {name: (process.wait(timeout=300), *process.communicate()) for name, process in processes.items()}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_console_script_mistakes_get_one_clear_line(mistakes, case):
    code, stdout, stderr = mistakes[case]
    expected = MISTAKES[case][1]
    assert code == 2, (code, stdout, stderr)
    assert expected in stderr, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert stderr.count("error:") == 1 and stderr.rstrip().splitlines()[-1].startswith("photon-hf ")


def test_hub_answers_are_told_apart(monkeypatch):
    """What the single Hub request answers decides the message: no such repository, or no network."""
    import types

    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    response = types.SimpleNamespace(status_code=404, headers={}, request=None)  # what the error reads of it
    answers = {
        "nor a model repository": errors.RepositoryNotFoundError("404 Repository Not Found", response=response),
        "could not be reached": ConnectionError("[Errno -2] Name or service not known"),
    }
    for expected, error in answers.items():
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", fail)
        with pytest.raises(cli.UsageError, match=expected):
            cli.resolve_model("someone/no-such-model")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *args, **kwargs: object())
    assert cli.resolve_model("someone/a-model") == "someone/a-model"


def test_quickstart_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "quick"
    threads = torch.get_num_threads()
    assert cli.main(["quickstart", "--output-dir", str(out), "--size", "tiny", "--minutes", "0.05",
                     "--block-size", "64", "--batch-size", "4", "--max-new-tokens", "8"]) == 0
    assert torch.get_num_threads() == threads  # the thread count it trained with was scoped to the training
    text = capsys.readouterr().out
    for marker in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "PhotonForCausalLM", "measured PhotonCache", "same-shape Llama"):
        assert marker in text, marker
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not list(out.glob("checkpoint-*"))  # no optimizer state left behind unless asked
    assert f"Wrote {out}" in text
