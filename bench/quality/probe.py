"""Why does a model learn slowly? Watch its interfaces during the first steps of the quality study's recipe.

At every stack's final RMSNorm (and PHOTON's chunkers and converters) the probe reports, on one training batch:

* `rms`: the RMS of the residual stream entering the norm. The norm's Jacobian scales gradients by 1 / rms, and a
  PHOTON token's gradient crosses several such norms on its way down to the encoders;
* `mean`: the fraction of that stream's energy in its mean over all positions (|mean|^2 / mean |x|^2). Near 1, every
  position carries the same vector: after the norm the latent says nothing about its input;
* `grad`: the L2 norm of the loss gradient at the module's output.

    python -m bench.quality.probe --width 512 --steps 60                      # PHOTON, the model's own init
    python -m bench.quality.probe --width 512 --steps 60 --init hf             # the old init (0.02 everywhere)
    python -m bench.quality.probe --width 512 --steps 60 --model llama

It uses `bench/quality/study.py`'s data, recipe (`--schedule-steps` sets the warm-up and decay length) and models.
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import LlamaForCausalLM

import photon_hf
from bench.quality.study import (
    INIT_SCHEMES,
    Recipe,
    batch_offsets,
    load_data,
    matched_llama,
    parameter_groups,
    photon_config,
)


def interfaces(model) -> dict[str, torch.nn.Module]:
    """The modules whose inputs and output gradients are watched."""
    watched = {}
    for name, module in model.named_modules():
        short = name.removeprefix("model.").replace("levels.", "L")
        if name.endswith(("encoder.norm", "decoder.norm", "chunker", "converter")) or name == "model.norm":
            watched[short] = module
    return watched


def probe(model, batch: torch.Tensor) -> tuple[float, dict]:
    stats, hooks = {}, []
    for name, module in interfaces(model).items():
        def hook(mod, args, out, name=name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            stats[name] = {"rms": float(x.pow(2).mean().sqrt()),
                           "mean": float(x.mean(0).pow(2).sum() / x.pow(2).sum(1).mean())}
            out.register_hook(lambda g, name=name: stats[name].__setitem__("grad", float(g.float().norm())))
        hooks.append(module.register_forward_hook(hook))
    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
    loss.backward()
    for h in hooks:
        h.remove()
    model.zero_grad(set_to_none=True)
    return float(loss), stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", choices=["photon", "llama"], default="photon")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=60, help="steps to train")
    parser.add_argument("--schedule-steps", type=int, default=600, help="length of the warm-up/decay schedule")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--init", choices=sorted(INIT_SCHEMES), default="default")
    parser.add_argument("--hierarchy-lr", type=float, default=1.0, help="as in bench.quality.study sweep")
    parser.add_argument("--photon", default="{}", help="PhotonConfig overrides as JSON")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file for the trace")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(steps=args.schedule_steps)
    photon = photon_config(args.width, json.loads(args.photon))
    torch.manual_seed(recipe.seed)
    model = photon_hf.PhotonForCausalLM(photon) if args.model == "photon" else LlamaForCausalLM(
        matched_llama(photon, recipe.seq_len))
    if INIT_SCHEMES[args.init] is not None:
        with torch.no_grad():
            INIT_SCHEMES[args.init](model)
    stream = torch.from_numpy(load_data(argparse.Namespace(train_files=None, valid_files=None))["train"])
    offsets = torch.from_numpy(batch_offsets(len(stream), recipe.seq_len, recipe.batch, recipe.steps, recipe.seed))
    span = torch.arange(recipe.seq_len)
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.weight_decay, args.hierarchy_lr), lr=args.lr,
                                  betas=recipe.betas)
    trace = []
    for step in range(args.steps + 1):
        batch = stream[offsets[step % recipe.steps][:, None] + span].long()
        if step % args.every == 0:
            loss, stats = probe(model, batch)
            trace.append({"step": step, "loss": loss, "interfaces": stats})
            print(f"step {step:4d} loss {loss:.3f}")
            for name, s in stats.items():
                grad = s.get("grad", float("nan"))
                print(f"    {name:22s} rms {s['rms']:8.2f}  mean {s['mean']:.3f}  grad {grad:.2e}")
        if step == args.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * group["lr_scale"] * recipe.lr_factor(step)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "trace": trace}, f, indent=1)
    return trace


if __name__ == "__main__":
    main()
