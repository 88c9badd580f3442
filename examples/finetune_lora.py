"""Fine-tune a saved PHOTON model with LoRA (PEFT), save the adapter, reload it, merge it.

    python examples/finetune_lora.py --model photon-quickstart --data my_notes.jsonl --output_dir runs/lora

`import photon_hf` registers PHOTON's default LoRA targets with PEFT (the attention and MLP projections of every
encoder and decoder stack), so `LoraConfig(task_type="CAUSAL_LM")` needs no `target_modules`. Pass
`--chunker --converter` to adapt those Linears too.
"""

import argparse

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import photon_hf  # noqa: F401  (registers PHOTON with the Auto classes and PEFT)
from photon_hf.data import load_text_corpus, pack_dataset
from photon_hf.training import build_trainer, training_arguments


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="photon-quickstart", help="saved PHOTON model folder")
    parser.add_argument("--data", default="stdlib", help="text to fine-tune on (a file, folder, glob or 'stdlib')")
    parser.add_argument("--output_dir", default="runs/lora")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--max_files", type=int, help="stdlib only: first N files per split")
    parser.add_argument("--chunker", action="store_true", help="also adapt each level's chunker")
    parser.add_argument("--converter", action="store_true", help="also adapt each level's converter")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    targets = photon_hf.lora_target_modules(args.chunker, args.converter) if args.chunker or args.converter else None
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.rank, lora_alpha=2 * args.rank,
                                             target_modules=targets))
    model.print_trainable_parameters()

    corpus = load_text_corpus(args.data, max_files=args.max_files)
    train = pack_dataset(corpus["train"], tokenizer, args.block_size)
    validation = pack_dataset(corpus["validation"], tokenizer, args.block_size, max_blocks=64)
    training_args = training_arguments(args.output_dir, max_steps=args.max_steps, learning_rate=1e-3, warmup_steps=0,
                                       eval_steps=max(1, args.max_steps // 2), save_strategy="no", logging_steps=10)
    trainer = build_trainer(model, training_args, train, validation, tokenizer)
    trainer.train()
    print("validation after fine-tuning:", trainer.evaluate())

    adapter_dir = f"{args.output_dir}/adapter"
    model.save_pretrained(adapter_dir)  # adapter_config.json + adapter_model.safetensors only
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.model), adapter_dir)
    merged = reloaded.merge_and_unload()  # a plain PhotonForCausalLM again
    ids = torch.tensor([train[0]["input_ids"][:64]])
    model.eval()
    with torch.no_grad():
        difference = (model(input_ids=ids).logits - merged(ids).logits).abs().max().item()
    print(f"max |logits(adapter) - logits(merged)| = {difference:.2e}")
    merged.save_pretrained(f"{args.output_dir}/merged")
    tokenizer.save_pretrained(f"{args.output_dir}/merged")
    print(f"adapter in {adapter_dir}, merged model in {args.output_dir}/merged")


if __name__ == "__main__":
    main()
