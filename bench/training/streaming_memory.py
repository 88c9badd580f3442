"""Peak memory of `photon-hf train --streaming` against the in-memory mode, over generated corpora of growing size.

For each corpus size (MB of text; the corpus is generated once under --dir: JSON Lines shards of at most 64 MB,
documents of random words of 1 to 16 KB) it runs, each in a fresh process whose peak resident set size (`ru_maxrss`
from `wait4`: everything the process ever held in RAM at once, memory-mapped files included) is recorded:

* `stream-train`: `photon-hf train --streaming --dataset DIR --max-steps N` (a tiny model; the stream is shuffled);
* `memory-train`: the same command without `--streaming` (the corpus is loaded and packed into the `datasets` cache,
  under --dir, before the first step);
* `stream-pass`: every block of the streamed corpus packed and counted, no model: the stream's memory when all of the
  corpus goes through it, not only the part that N steps read.

One JSON file under bench/training/results/ and a Markdown table on stdout. The corpora and the cache are deleted at
the end unless --keep.

    python -m bench.training.streaming_memory --sizes 100,1000 --dir /tmp/photon-corpus
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1 << 20
SHARD_BYTES = 64 * MB

PASS = """
import sys, time
from photon_hf.data import byte_tokenizer, load_text_corpus, pack_dataset
started = time.monotonic()
corpus = load_text_corpus(sys.argv[1], streaming=True)
blocks = pack_dataset(corpus["train"], byte_tokenizer(), int(sys.argv[2]))
count = sum(1 for _ in blocks)
print(f"BLOCKS {count} SECONDS {time.monotonic() - started:.1f}")
"""


def generate_corpus(folder: Path, megabytes: int, seed: int = 0) -> Path:
    """`megabytes` MB of JSON Lines documents (random words from a 4096-word vocabulary with Zipf-like frequencies,
    1 to 16 KB each) in shards of at most 64 MB; reused when the folder already holds them."""
    done = folder / "COMPLETE"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, 4096)
    letters = rng.integers(ord("a"), ord("z") + 1, int(lengths.sum())).astype(np.uint8).tobytes().decode()
    ends = np.cumsum(lengths)
    vocabulary = np.array([letters[e - n : e] for e, n in zip(ends, lengths, strict=True)])
    weights = 1.0 / np.arange(1, 4097)
    weights /= weights.sum()
    written, shard = 0, 0
    while written < megabytes * MB:
        path = folder / f"shard-{shard:04d}.jsonl"
        with path.open("w") as f:
            size = 0
            while size < SHARD_BYTES and written + size < megabytes * MB:
                words = vocabulary[rng.choice(4096, int(rng.integers(200, 3000)), p=weights)]
                line = json.dumps({"text": " ".join(words)}) + "\n"
                f.write(line)
                size += len(line)
        written += size
        shard += 1
    done.write_text(f"{written} bytes in {shard} shards\n")
    return folder


def peak_rss(command: list[str], env: dict) -> dict:
    """Run `command`; its exit code, wall seconds, peak RSS (MiB) and the last lines of its output."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "exit": process.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "tail": output.strip().splitlines()[-3:],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000", help="corpus sizes in MB (default: 100,1000)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/photon-corpus"), help="corpora and datasets cache")
    parser.add_argument("--steps", type=int, default=50, help="training steps of each run (default: 50)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--modes", default="stream-train,memory-train,stream-pass")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and the datasets cache")
    parser.add_argument("--output", type=Path, default=RESULTS / "streaming-memory.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")

    import photon_hf

    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "photon_hf": photon_hf.__version__,
        "steps": args.steps, "batch_size": args.batch_size, "block_size": args.block_size, "runs": [],
    }
    train = [sys.executable, "-m", "photon_hf", "train", "--size", "tiny", "--max-steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--block-size", str(args.block_size), "--eval-steps",
             str(args.steps), "--eval-blocks", "16", "--logging-steps", str(args.steps), "--no-save-checkpoints"]
    try:
        for size in sizes:
            corpus = generate_corpus(args.dir / f"corpus-{size}mb", size)
            on_disk = sum(p.stat().st_size for p in corpus.glob("*.jsonl"))
            for mode in modes:
                cache = args.dir / "datasets-cache"
                env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
                output = args.dir / f"run-{mode}-{size}"
                if mode == "stream-pass":
                    command = [sys.executable, "-c", PASS, str(corpus), str(args.block_size)]
                else:
                    command = [*train, "--dataset", str(corpus), "--output-dir", str(output)]
                    command += ["--streaming"] if mode == "stream-train" else []
                print(f"[{size} MB] {mode}: {' '.join(command[:4])} ...", flush=True)
                run = {"corpus_mb": round(on_disk / MB, 1), "mode": mode, **peak_rss(command, env)}
                if mode == "memory-train" and cache.exists():
                    run["datasets_cache_mb"] = round(sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
                                                     / MB, 1)
                print(f"    peak RSS {run['peak_rss_mib']} MiB, {run['seconds']} s, exit {run['exit']}", flush=True)
                record["runs"].append(run)
                shutil.rmtree(output, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(record, indent=1) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    print("\n| corpus | mode | peak RSS | wall time |\n|---|---|---|---|")
    for run in record["runs"]:
        print(f"| {run['corpus_mb']:.0f} MB | {run['mode']} | {run['peak_rss_mib']:.0f} MiB | {run['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
