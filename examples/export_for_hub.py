"""Write a Hub-ready folder for a saved PHOTON model, check it loads without photon_hf, optionally upload it.

    python examples/export_for_hub.py --model photon-quickstart --output photon-quickstart-hub
    python examples/export_for_hub.py --model photon-quickstart --output hub/x --repo_id me/photon-x --push

The folder holds the safetensors weights, config.json with auto_map, the modeling source files, the tokenizer,
generation_config.json and a model card (README.md) with the evaluation loss and KV-cache size, so that
`AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)` works where photon_hf is not installed.
"""

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer

from photon_hf import export_for_hub
from photon_hf.hub import push_folder_to_hub, read_training_info


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="photon-quickstart", help="saved PHOTON model folder")
    parser.add_argument("--output", default="photon-quickstart-hub", help="folder to write")
    parser.add_argument("--repo_id", help="Hub repository (user/name), for the model card and --push")
    parser.add_argument("--push", action="store_true", help="upload the folder to --repo_id (needs `hf auth login`)")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    info = read_training_info(args.model)  # what `photon-hf train` recorded (training data, eval metrics)
    folder = export_for_hub(
        model, args.output, tokenizer, repo_id=args.repo_id,
        training_data=info.get("training_data"), dataset_name=info.get("dataset_name"),
        eval_results={k: v for k, v in info.items() if k.startswith("eval_")} or None,
    )
    print("wrote", folder, sorted(p.name for p in folder.iterdir()))
    if args.push:
        if not args.repo_id:
            parser.error("--push needs --repo_id")
        print(push_folder_to_hub(folder, args.repo_id).commit_url)


if __name__ == "__main__":
    main()
