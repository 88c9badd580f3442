"""Text generation with the stock `pipeline("text-generation")` on a saved PHOTON model.

    python examples/pipeline_generation.py --model photon-quickstart --prompt "def " --prompt "import "

`import photon_hf` registers PHOTON with the Auto classes; on an exported folder without photon_hf installed,
pass trust_remote_code=True instead (see examples/export_for_hub.py).
"""

import argparse

from transformers import pipeline

import photon_hf  # noqa: F401  (registers PHOTON with the Auto classes)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="photon-quickstart")
    parser.add_argument("--prompt", action="append", help="repeat for a batch (default: 'def ')")
    parser.add_argument("--max_new_tokens", type=int, default=80)
    args = parser.parse_args()

    generator = pipeline("text-generation", model=args.model)
    generator.tokenizer.padding_side = "left"  # PHOTON generates batches padded on the left
    for result in generator(args.prompt or ["def "], max_new_tokens=args.max_new_tokens, do_sample=True,
                            temperature=0.8, top_k=40, batch_size=4):
        print("---")
        print(result[0]["generated_text"])


if __name__ == "__main__":
    main()
