"""Check a PHOTON model served by vLLM's OpenAI server against `photon-hf generate` (docs/vllm.md):

1. 16 concurrent greedy completions equal `photon-hf generate`'s for the same prompts (greedy, each alone), token
   for token (vLLM's `return_token_ids`: a detokenizer may hold back a trailing partial character, which
   `photon-hf generate` prints as a replacement character);
2. `n=2` returns two choices;
3. a sampled request with a `seed` gives the same text alone and inside a batch of 8 other requests.

    python -m vllm.entrypoints.openai.api_server --model photon-quickstart-hub --host 127.0.0.1 --port 8000 &
    python examples/vllm_client.py --model photon-quickstart-hub --url http://127.0.0.1:8000/v1

Exits 1 if a check fails. Needs `openai` (vLLM brings it) and photon_hf (the reference generation).
"""

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import photon_hf  # noqa: F401  (registers PHOTON with the Auto classes)

PROMPTS = ["def ", "import ", "class ", "    return ", "for i in range(", "if __name__ == ", "# ", "from . import ",
           "    def __init__(self", "with open(", "raise ValueError(", "try:\n    ", "x = [", "print(", "while ",
           "@property\n    def "]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the folder the server serves (for the reference)")
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--served-model-name", default=None, help="default: --model")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.url, api_key=args.api_key, timeout=600, max_retries=0)
    name = args.served_model_name or args.model

    def complete(prompt, **options):
        return client.completions.create(model=name, prompt=prompt, max_tokens=args.max_tokens, **options)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: complete(p, temperature=0, extra_body=dict(return_token_ids=True)),
                                PROMPTS))
    served = [a.choices[0].model_dump()["token_ids"] for a in answers]
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    eos = model.generation_config.eos_token_id
    reference = []
    for prompt in PROMPTS:  # what `photon-hf generate --model MODEL --prompt PROMPT` runs: greedy generate()
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            new = model.generate(ids, max_new_tokens=args.max_tokens, do_sample=False)[0, ids.shape[1]:].tolist()
        reference.append(new[: new.index(eos) + 1] if eos in new else new)  # then padding
    equal = sum(s == r for s, r in zip(served, reference, strict=True))
    print(f"1. {equal}/{len(PROMPTS)} concurrent greedy completions equal photon-hf generate")
    for prompt, s, r in zip(PROMPTS, served, reference, strict=True):
        if s != r:
            print(f"   {prompt!r}: served {tokenizer.decode(s)!r}\n   {' ' * len(repr(prompt))}  generate "
                  f"{tokenizer.decode(r)!r}")

    sampled = dict(temperature=0.8, top_p=0.95, seed=1234)
    pair = complete("def ", n=2, **sampled).choices
    print(f"2. n=2 gave {len(pair)} choices: {[c.text[:30] for c in pair]}")

    alone = complete("import ", **sampled).choices[0].text
    with ThreadPoolExecutor(9) as pool:
        busy = [pool.submit(complete, p, temperature=0.8, seed=i) for i, p in enumerate(PROMPTS[:8])]
        again = pool.submit(complete, "import ", **sampled).result().choices[0].text
        [future.result() for future in busy]
    print(f"3. seed 1234 alone and in a busy batch: {'the same text' if alone == again else 'DIFFERENT text'}")
    sys.exit(0 if equal == len(PROMPTS) and len(pair) == 2 and alone == again else 1)


if __name__ == "__main__":
    main()
