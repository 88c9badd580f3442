"""Build a small PHOTON, save it in Hugging Face format, load it back with AutoModelForCausalLM, generate, and
compare its cache with a same-size Llama. (The training quickstart replaces this once training lands.)"""

import tempfile

import torch
from transformers import AutoModelForCausalLM

import photon_hf


def main():
    torch.manual_seed(0)
    config = photon_hf.PhotonConfig(vocab_size=256, hidden_size=128, intermediate_size=344, num_attention_heads=4,
                                    chunk_sizes=[4, 4], num_encoder_layers=2, num_decoder_layers=2)
    model = AutoModelForCausalLM.from_config(config)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = torch.tensor([list(b"def hello(")])
    out = model.generate(prompt, max_new_tokens=32, do_sample=False)
    print("generated ids:", out[0, prompt.shape[1]:].tolist())
    for tokens in (1024, 4096, 16384):
        photon = photon_hf.kv_cache_bytes(config, tokens)
        llama = photon_hf.llama_kv_cache_bytes(config, tokens)
        print(f"{tokens:>6} tokens: PHOTON cache {photon / 2**20:7.2f} MiB, same-size Llama {llama / 2**20:7.2f} MiB"
              f" ({llama / photon:.1f}x)")


if __name__ == "__main__":
    main()
