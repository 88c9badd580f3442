"""Streaming generation: print the text token by token with `TextStreamer` as PHOTON generates it, then show how
much cache the generation held.

    python examples/stream_generation.py --model photon-quickstart --prompt "class Parser:"
"""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

import photon_hf
from photon_hf.hub import format_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="photon-quickstart")
    parser.add_argument("--prompt", default="class Parser:")
    parser.add_argument("--max_new_tokens", type=int, default=300)
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    inputs = tokenizer(args.prompt, return_tensors="pt")
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    torch.manual_seed(0)
    output = model.generate(**inputs, streamer=streamer, max_new_tokens=args.max_new_tokens, do_sample=True,
                            temperature=0.8, top_k=40, return_dict_in_generate=True)
    cache = getattr(output, "cache", None) or output.past_key_values  # renamed to `cache` in transformers 5.24
    tokens = output.sequences.shape[1]
    llama = photon_hf.llama_kv_cache_bytes(model.config, tokens, dtype=model.dtype)
    print(f"\n\nPhotonCache after {tokens} tokens: {format_bytes(cache.nbytes())} allocated; a same-shape Llama's KV "
          f"cache would hold {format_bytes(llama)}.")


if __name__ == "__main__":
    main()
