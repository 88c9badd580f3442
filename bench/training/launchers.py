"""Run every training command of docs/training.md on CPU processes and check that each launcher forms one job.

The commands are read from the ```bash blocks of docs/training.md (lines starting with `photon-hf train`,
`python examples/`, `torchrun` or `accelerate launch`), so the page and this check cannot drift apart. Each runs as
written, in a scratch folder that holds `corpus/` and `my_texts/` (generated text) and `examples/` (a link), with a
tiny model and a few steps appended (`--size tiny --max-steps 3 ...`, 2 blocks per process). A command with
`$NODE_RANK` runs twice at once, as node 0 and node 1 of a two-node job on this machine (`MASTER_ADDR=127.0.0.1`).
Lines ending in a `# needs ...` comment (GPUs, the Hub) are listed as not run; other comments are dropped.

A multi-process command passes when it exits 0 and its saved model equals, within 5e-5, the same command run as one
process with the whole batch (2 x 2 blocks against 1 x 4): independent processes would each train on their own
batch and end elsewhere (the `examples/pretrain.py` that set `use_cpu` too late ended 2e-4 away). One JSON file
under bench/training/results/ and a Markdown table on stdout.

    python -m bench.training.launchers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "training.md"
RESULTS = Path(__file__).resolve().parent / "results"
STARTS = ("photon-hf train", "python examples/", "torchrun", "accelerate launch")
TOLERANCE = 5e-5

# Appended to each command by the program it runs: a tiny model, 3 steps, 2 blocks per process.
TINY = {
    "photon_hf": "--size tiny --max-steps 3 --block-size 64 --batch-size {batch} --eval-blocks 2 --eval-steps 3 "
                 "--save-steps 3 --logging-steps 1 --validation-fraction 0.2",
    "pretrain.py": "--size tiny --max_steps 3 --block_size 64 --per_device_train_batch_size {batch} "
                   "--per_device_eval_batch_size 2 --max_eval_blocks 2 --eval_strategy no --save_strategy no "
                   "--logging_steps 1 --report_to none --seed 0",
    "pretrain_fsdp2.py": "--size tiny --max_steps 3 --block_size 64 --batch_size {batch} --eval_blocks 2",
}


def documented_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks of a Markdown page."""
    commands, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.startswith(STARTS):
            commands.append(line.strip())
    return commands


def write_corpus(folder: Path, documents: int = 120):
    """One JSON Lines file (one shard: the streamed processes then share one stream, block by block)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (folder / "docs.jsonl").open("w") as f:
        for i in range(documents):
            f.write(json.dumps({"text": f"{i}: " + " ".join(f"w{w}" for w in rng.integers(0, 50, 40))}) + "\n")


def program(command: str) -> str:
    for name in ("pretrain_fsdp2.py", "pretrain.py"):
        if name in command:
            return name
    return "photon_hf"


def processes(command: str) -> int:
    """How many processes the command starts in all (torchrun: nodes x per node; accelerate: --num_processes)."""
    def value(flag, default):
        found = re.search(rf"{flag}[ =](\d+)", command)
        return int(found.group(1)) if found else default

    if command.startswith("torchrun"):
        return value("--nnodes", 1) * value("--nproc_per_node", 1)
    if command.startswith("accelerate launch"):
        return value("--num_processes", 1)
    return 1


def output_dir(command: str) -> str:
    return re.search(r"--output[-_]dir[ =](\S+)", command).group(1)


def single_process(command: str) -> str:
    """The same run as one process: the launcher's options dropped (DeepSpeed and the FSDP2 example still need a
    process group: a torchrun of one process)."""
    script = program(command)
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 1"
    needs_group = "--deepspeed" in command or script == "pretrain_fsdp2.py"
    if script == "photon_hf":
        arguments = re.search(r"(?:-m photon_hf|photon-hf) train(.*)", command).group(1)
        return f"{launcher if needs_group else sys.executable} -m photon_hf train{arguments}"
    arguments = command.split(f"examples/{script}", 1)[1]
    return f"{launcher if needs_group else sys.executable} examples/{script}{arguments}"


def with_tiny(command: str, batch: int) -> str:
    tiny = TINY[program(command)].format(batch=batch)
    if program(command) == "photon_hf" and "--dataset" not in command:
        tiny += " --max-files 8"  # the stdlib corpus, a few files
    if program(command) == "pretrain.py" and "--dataset" not in command:
        tiny += " --max_files 8"
    return f"{command} {tiny}"


def run(command: str, cwd: Path, env: dict, timeout: int) -> tuple[int, float, str]:
    """Run a shell command line (`$NODE_RANK` in it: twice at once, as node 0 and node 1)."""
    started = time.monotonic()
    ranks = ["0", "1"] if "$NODE_RANK" in command else [None]
    children = []
    for rank in ranks:
        child_env = {**env, **({"NODE_RANK": rank} if rank is not None else {})}
        children.append(subprocess.Popen(["bash", "-c", command], cwd=cwd, env=child_env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs, codes = [], []
    for child in children:
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            out, _ = child.communicate()
        outputs.append(out)
        codes.append(child.returncode)
    return max(codes, key=abs), time.monotonic() - started, "\n".join(outputs)


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the commands that contain this text")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per command")
    parser.add_argument("--output", type=Path, default=RESULTS / "launchers.json")
    args = parser.parse_args()

    commands = documented_commands(DOCS.read_text())
    if args.only:
        commands = [c for c in commands if args.only in c]
    scratch = Path(tempfile.mkdtemp(prefix="photon-launchers-"))
    (scratch / "examples").symlink_to(REPO / "examples")
    write_corpus(scratch / "corpus")
    write_corpus(scratch / "my_texts")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    record = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": []}
    for documented in commands:
        command, _, comment = documented.partition("  #")
        command, comment = command.rstrip(), comment.strip()
        entry = {"command": command}
        if comment.startswith("needs"):
            entry["result"] = f"not run: {comment}"
            record["runs"].append(entry)
            print(f"- {command}\n  {entry['result']}", flush=True)
            continue
        count = processes(command)
        line = with_tiny(command, batch=2)
        print(f"- {line}", flush=True)
        code, seconds, output = run(line, scratch, env, args.timeout)
        entry.update(processes=count, exit=code, seconds=round(seconds, 1), tail=output.strip().splitlines()[-4:])
        if code == 0 and count > 1:
            reference = with_tiny(single_process(command), batch=2 * count)
            folder = output_dir(command)
            reference = reference.replace(folder, folder + "-one-process")
            ref_code, _, ref_output = run(reference, scratch, env, args.timeout)
            if ref_code == 0:
                entry["max_difference_to_one_process"] = max_weight_difference(
                    scratch / folder, scratch / (folder + "-one-process"))
                one_job = entry["max_difference_to_one_process"] < TOLERANCE
                entry["result"] = "one job" if one_job else "NOT one job"
            else:
                entry["result"] = f"reference failed: {ref_output.strip().splitlines()[-1:]}"
        else:
            entry["result"] = "ran" if code == 0 else f"FAILED (exit {code})"
        print(f"  {entry['result']}, {seconds:.0f} s" + (
            f", |w - w(1 process)| = {entry['max_difference_to_one_process']:.1e}"
            if "max_difference_to_one_process" in entry else ""), flush=True)
        if code != 0:
            print("\n".join(output.strip().splitlines()[-15:]), flush=True)
        record["runs"].append(entry)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")

    print("\n| command (tiny settings appended) | processes | result | max weight difference to 1 process |")
    print("|---|---|---|---|")
    for entry in record["runs"]:
        difference = entry.get("max_difference_to_one_process")
        shown = f"{difference:.1e}" if difference is not None else "-"
        print(f"| `{entry['command']}` | {entry.get('processes', '-')} | {entry['result']} | {shown} |")
    print(f"\n(scratch folder: {shlex.quote(str(scratch))})")


if __name__ == "__main__":
    main()
