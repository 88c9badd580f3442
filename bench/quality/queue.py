"""The quality study's long CPU runs (docs/quality.md), one after another in one process, each checkpointed.

Start it again in a later sitting and it continues: runs already in their results file are skipped, a run cut
short continues bit-exactly from its last checkpoint (`bench.quality.study sweep` does both), and a learning rate
the queue picks from short runs is picked again from the same results. From the repository root:

    OMP_NUM_THREADS=1 setsid nohup nice -n 15 python -m bench.quality.queue run --pid-file PIDFILE \\
        >> bench/quality/results/queue.log 2>&1 &
    python -m bench.quality.queue status      # per run: done, at step N (checkpointed), or not started
    kill -STOP PID / kill -CONT PID           # pause / resume (one process makes every run)

Each step is a `sweep` (one thread, one run at a time); a step named "pick" first chooses a learning rate from short
runs on the selection split (extending the sweep by a factor of two while the best rate is at its edge), and the
tables and plots (`trend`, `report`) are rewritten after every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread: the CPU is shared

import torch  # noqa: E402

from bench.quality import study  # noqa: E402

RESULTS = Path("bench/quality/results")
BPE = RESULTS / "bpe-4096.json"
LOOKBACK = ["decoder_lookback=8"]
# The lever aimed at the copy gap (docs/quality.md, "A lever for the copy gap"): the chunk-rate context encoder,
# where copying from beyond the look-back has to happen, four layers deep instead of two, paid for by the level above
# (one level of 4-byte chunks), with the look-back: no model change, less training compute than look-back 8 at [4,4].
LEVER = ["chunk_sizes=4", "num_encoder_layers=4", "decoder_lookback=8"]
CONTROL = ["chunk_sizes=4", "decoder_lookback=8"]  # the same without the deeper encoder
# The control's saved compute spent at the token rate instead: a three-layer token decoder (training FLOPs closest
# to the four-layer Llama's, like look-back 8 at [4,4]; the cache grows by one layer of look-back entries).
DEEPER_DECODER = [*CONTROL, "num_decoder_layers=3"]
# The study's common flags: one thread; the long runs keep a curve point every 240 steps (1M tokens).
LONG = ["--threads", "1", "--steps", "2400", "--eval-every", "240"]
SHORT = ["--threads", "1", "--legacy-tokens", "0", "--no-agreement"]


@dataclasses.dataclass
class Step:
    """One sweep of the queue. With `pick` (a list of starting rates), `lrs` is chosen first: the best rate of a short
    sweep (`pick_args`, on the selection split), extended while the best is at its edge."""

    name: str
    args: list[str]
    results: Path
    pick: list[float] | None = None
    pick_args: list[str] | None = None
    pick_results: Path | None = None

    def sweep_argv(self, lrs: list[float]) -> list[str]:
        return ["sweep", *self.args, "--lrs", *map(str, lrs), "--results", str(self.results)]


def steps() -> list[Step]:
    """The queue, in order: the lever at width 128 (rate from short runs, then 9.8M tokens) and a short control run;
    the subword runs at width 128 (rates from short runs, then 9.8M tokens); the control to 9.8M tokens (does the
    lever gain from its depth or from dropping the level above?); width 256 to 9.8M tokens (the look-back's rate from
    short runs; the Llama at its rule rate 1e-3, the default [4,4] at `default_learning_rate`'s 5e-4); the lever at
    256, since it helped at 128 (rate from short runs), and its control there, since at 128 the control took most
    of the lever's gain (its long run at the lever's 1e-3 came first; its own rate from short runs, and a new long
    run only if they pick another); the Llama matched to the control's training FLOPs (three layers) and the control
    with a three-layer token decoder (matched by FLOPs to the four-layer Llama), both at the control's rate; then both
    Llamas at 256 at their own rates, picked on short runs (the four-layer one ended no better than the three-layer
    one at 1e-3, and its short runs favour a lower rate)."""
    bpe = ["--tokenizer", str(BPE)]
    w128, w256 = ["--widths", "128"], ["--widths", "256"]
    bpe_short = [*SHORT, *bpe, *w128, "--steps", "300"]

    def picked_256(name: str, model: str, photon: list[str], results: str, pick: list[float]) -> Step:
        """9.8M tokens at width 256, the rate picked by 300-step runs on the selection split (`cpu-256.jsonl`)."""
        flags = [*w256, "--models", model, "--photon", *photon]
        return Step(name, [*LONG, "--legacy-tokens", "0", *flags], RESULTS / results, pick=pick,
                    pick_args=[*SHORT, "--steps", "300", *flags], pick_results=RESULTS / "cpu-256.jsonl")

    return [
        Step("lever 128", [*LONG, *w128, "--models", "photon", "--photon", *LEVER],
             RESULTS / "cpu-trend-128-lever.jsonl", pick=[1e-3, 2e-3],
             pick_args=[*SHORT, *w128, "--steps", "600", "--models", "photon", "--photon", *LEVER],
             pick_results=RESULTS / "cpu-lever-128.jsonl"),
        Step("lever control 128 (one level, encoder 2 layers)",
             [*SHORT, *w128, "--steps", "600", "--models", "photon", "--photon", *CONTROL, "--lrs", "1e-3"],
             RESULTS / "cpu-lever-128.jsonl"),
        Step("bpe llama 128", [*LONG, *bpe, *w128, "--legacy-tokens", "0", "--models", "llama"],
             RESULTS / "cpu-trend-128-bpe.jsonl", pick=[1e-3, 2e-3],
             pick_args=[*bpe_short, "--models", "llama"], pick_results=RESULTS / "cpu-bpe-128.jsonl"),
        Step("bpe default 128", [*LONG, *bpe, *w128, "--legacy-tokens", "0", "--models", "photon"],
             RESULTS / "cpu-trend-128-bpe.jsonl", pick=[1e-3, 2e-3],
             pick_args=[*bpe_short, "--models", "photon"], pick_results=RESULTS / "cpu-bpe-128.jsonl"),
        Step("bpe look-back 128", [*LONG, *bpe, *w128, "--legacy-tokens", "0", "--models", "photon",
                                   "--photon", *LOOKBACK],
             RESULTS / "cpu-trend-128-bpe.jsonl", pick=[1e-3, 2e-3],
             pick_args=[*bpe_short, "--models", "photon", "--photon", *LOOKBACK],
             pick_results=RESULTS / "cpu-bpe-128.jsonl"),
        Step("lever control 128, 9.8M tokens", [*LONG, *w128, "--models", "photon", "--photon", *CONTROL,
                                                 "--lrs", "1e-3"],
             RESULTS / "cpu-trend-128-lever.jsonl"),
        picked_256("look-back 256", "photon", LOOKBACK, "cpu-trend-256-lookback.jsonl", [5e-4, 7.07e-4, 1e-3]),
        Step("llama 256 (matched to look-back 8)",
             [*LONG, *w256, "--legacy-tokens", "0", "--models", "llama", "--photon", *LOOKBACK, "--lrs", "1e-3"],
             RESULTS / "cpu-trend-256.jsonl"),
        Step("default 256", [*LONG, *w256, "--legacy-tokens", "0", "--models", "photon", "--lrs", "5e-4"],
             RESULTS / "cpu-trend-256.jsonl"),
        picked_256("lever 256", "photon", LEVER, "cpu-trend-256-lever.jsonl", [5e-4, 1e-3]),
        picked_256("lever control 256", "photon", CONTROL, "cpu-trend-256-lever.jsonl", [5e-4, 1e-3]),
        Step("llama 256 (matched to the control)",
             [*LONG, *w256, "--legacy-tokens", "0", "--models", "llama", "--photon", *CONTROL, "--lrs", "1e-3"],
             RESULTS / "cpu-trend-256.jsonl"),
        Step("deeper token decoder 256",
             [*LONG, *w256, "--legacy-tokens", "0", "--models", "photon", "--photon", *DEEPER_DECODER, "--lrs", "1e-3"],
             RESULTS / "cpu-trend-256-lever.jsonl"),
        picked_256("llama 256 at its own rate", "llama", LOOKBACK, "cpu-trend-256.jsonl", [5e-4, 7.07e-4, 1e-3]),
        picked_256("llama 256, 3 layers, at its own rate", "llama", CONTROL, "cpu-trend-256.jsonl", [5e-4, 1e-3]),
    ]


def pick_rate(step: Step, run: bool = True, lrs: list[float] | None = None) -> float | None:
    """The best rate of the step's short sweep on the selection split, running the short runs still missing (with
    `run`); the sweep grows by a factor of two past an edge that wins, up to twice (`lrs`, when given, ends up
    holding the rates swept). None when not all are run yet."""
    lrs = lrs if lrs is not None else []
    lrs[:] = step.pick
    for _ in range(3):
        argv = ["sweep", *step.pick_args, "--lrs", *map(str, lrs), "--results", str(step.pick_results)]
        if run:
            study.main(argv)
        args = study.parse_args(argv)
        keys = {study.run_key(k) for k in study.planned_runs(args)}
        runs = [r for r in study.load_results(step.pick_results) if study.run_key(r) in keys]
        if len(runs) < len(keys):
            return None
        (best,) = study.best_runs(runs).values()
        if not best["lr_at_edge"]:
            return best["lr"]
        lrs.append(best["lr"] * 2 if best["lr"] == max(lrs) else best["lr"] / 2)
    return best["lr"]


def write_tables():
    """The learning curves and final tables of the long runs (`trend`, `report`), byte-level and subword apart, and
    the table of the short runs at width 128 that diagnose the copy gap and try the lever."""
    short = [RESULTS / "cpu-diagnosis.jsonl", RESULTS / "cpu-lever-128.jsonl"]
    study.main(["report", "--results", *map(str, short), "--out", str(RESULTS / "cpu-lever")])
    curves = sorted(RESULTS.glob("cpu-trend-*.jsonl"))
    for name, files in (("", [p for p in curves if "bpe" not in p.name]),
                        ("-bpe", [p for p in curves if "bpe" in p.name])):
        for argv in (["trend", "--results", *map(str, files), "--out", str(RESULTS / f"cpu-trend{name}")],
                     ["report", "--results", *map(str, files), "--out", str(RESULTS / f"cpu-eval{name}")]):
            try:
                study.main(argv)
            except SystemExit as stop:  # no runs of that kind yet
                print(f"{argv[0]}: {stop}")


def stamp(message: str):
    print(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def run(args):
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")
    torch.set_num_threads(1)
    try:
        if not BPE.exists():
            stamp(f"training the subword tokenizer: {BPE}")
            study.main(["bpe", "--vocab-size", "4096", "--out", str(BPE)])
        for step in steps():
            if args.only and step.name not in args.only:
                continue
            stamp(step.name)
            try:
                lrs = [pick_rate(step)] if step.pick else []
                study.main(step.sweep_argv(lrs) if lrs else ["sweep", *step.args, "--results", str(step.results)])
                write_tables()
            except (Exception, SystemExit):  # one failing step does not stop the queue
                traceback.print_exc()
        stamp("queue done")
    finally:
        if args.pid_file and Path(args.pid_file).read_text().strip() == str(os.getpid()):
            Path(args.pid_file).unlink()


def status(args):
    """Per step and run: done, at step N of its checkpoint, or not started."""
    print(f"subword tokenizer {BPE}: {'trained' if BPE.exists() else 'not trained yet'}")
    for step in steps():
        print(step.name)
        if str(BPE) in step.args and not BPE.exists():
            print("    waits for the subword tokenizer")
            continue
        sweeps = []
        if step.pick:
            lrs = []
            picked = pick_rate(step, run=False, lrs=lrs)
            sweeps.append(["sweep", *step.pick_args, "--lrs", *map(str, lrs), "--results", str(step.pick_results)])
            if picked is not None:
                sweeps.append(step.sweep_argv([picked]))
        else:
            sweeps.append(["sweep", *step.args, "--results", str(step.results)])
        for argv in sweeps:
            parsed = study.parse_args(argv)
            results = Path(parsed.results)
            done = {study.run_key(r) for r in study.load_results(results)}
            for key in study.planned_runs(parsed):
                state = "done" if study.run_key(key) in done else "not started"
                checkpoint = study.RunCheckpoint(results.with_suffix(".checkpoints"), study.run_key(key))
                if state != "done" and checkpoint.path.exists():
                    saved = torch.load(checkpoint.path, map_location="cpu", weights_only=True)
                    state = f"at step {saved['steps_done']} of {key['recipe']['steps']}"
                print(f"    {key['model']} lr={key['lr']:g} steps={key['recipe']['steps']} {results.name}: {state}")
        if step.pick and len(sweeps) == 1:
            print("    (the long run's rate is picked once its short runs are done)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="make every run not done yet, in order")
    start.add_argument("--pid-file", default=None, help="write this process's id there while it runs")
    start.add_argument("--only", nargs="+", metavar="STEP", default=None,
                       help="run only the steps of these names, in the queue's order (two runners side by side)")
    commands.add_parser("status", help="what is done, what is checkpointed, what has not started")
    args = parser.parse_args(argv)
    unknown = set(getattr(args, "only", None) or []) - {step.name for step in steps()}
    if unknown:
        parser.error(f"no step named {sorted(unknown)}; `status` lists them")
    {"run": run, "status": status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
