"""Hub export: the folder's contents and model card, loading it with trust_remote_code where photon_hf cannot be
imported, and what push_to_hub / push_folder_to_hub would upload (mocked, nothing leaves the machine)."""

import json
import math
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from train_helpers import BLOCK_PHOTON, run_python, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import photon_hf
from photon_hf import (
    PhotonConfig,
    PhotonForCausalLM,
    export_for_hub,
    kv_cache_bytes,
    llama_kv_cache_bytes,
    lora_target_modules,
)
from photon_hf.data import byte_tokenizer
from photon_hf.hub import AUTO_MAP, auto_class_registration, format_bytes, push_folder_to_hub

SOURCES = (
    "modeling_photon.py", "configuration_photon.py", "cache_photon.py", "attention_photon.py", "serving.py"
)
EXPECTED_FILES = {
    "README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", *SOURCES,
}
EVAL = {"eval_loss": 2.5, "eval_perplexity": math.exp(2.5)}


@pytest.fixture
def exported(tmp_path):
    model = tiny_model()
    folder = export_for_hub(
        model, tmp_path / "export", byte_tokenizer(), repo_id="someone/photon-tiny",
        training_data="Forty files of the Python standard library.", dataset_name="python-stdlib",
        eval_results=EVAL, context_lengths=(1024, 4096),
    )
    return model, folder


def test_export_folder_and_model_card(exported):
    model, folder = exported
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "photon"
    package = Path(photon_hf.__file__).parent
    for name in SOURCES:
        source = (folder / name).read_text()
        assert source == (package / name).read_text()
        # trust_remote_code needs flat relative imports and no dependency on the photon_hf package.
        assert not re.search(r"^\s*(from|import)\s+photon_hf", source, re.MULTILINE), name
        for module in re.findall(r"^\s*from\s+\.(\S*)\s+import", source, re.MULTILINE):
            assert module and "." not in module and f"{module}.py" in EXPECTED_FILES, (name, module)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["bos_token_id"]) == (258, 256, 257)

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "arxiv:2512.20687" in card.data.tags and "custom_code" in card.data.tags
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics == {"loss": 2.5, "perplexity": round(math.exp(2.5), 4)}
    assert "Forty files of the Python standard library." in card.text
    assert "| loss (nats/token) | 2.5000 |" in card.text
    assert 'from_pretrained("someone/photon-tiny", trust_remote_code=True)' in card.text
    for n in (1024, 4096):  # the analytic cache sizes, in the model's dtype
        photon = format_bytes(kv_cache_bytes(model.config, n, dtype=torch.float32))
        llama = format_bytes(llama_kv_cache_bytes(model.config, n, dtype=torch.float32))
        assert f"| {n:,} | {photon} | {llama} |" in card.text


def test_export_leaves_no_registration_behind(exported, tmp_path):
    model, _ = exported
    assert "_auto_class" not in PhotonForCausalLM.__dict__ and "_auto_class" not in PhotonConfig.__dict__
    assert "auto_map" not in model.config.__dict__ and not model.is_remote_code()
    model.save_pretrained(tmp_path / "plain")  # an ordinary save copies no code and writes no auto_map
    assert not (tmp_path / "plain" / "modeling_photon.py").exists()
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    # ... and loads back (with the installed classes) to the same logits: RoPE frequencies are a non-persistent
    # buffer that from_pretrained must re-create.
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert type(loaded) is PhotonForCausalLM
    ids = torch.randint(0, 259, (2, 21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="merge_and_unload"):
        export_for_hub(get_peft_model(tiny_model(), LoraConfig(r=2)), tmp_path / "peft")


REMOTE = BLOCK_PHOTON + """
import sys, torch
try:
    import photon_hf
except ImportError:
    pass
else:
    raise SystemExit("photon_hf is importable in the remote-code process")
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tokenizer(["def parse(text):\\n    return"], return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
    greedy = model.generate(ids, max_new_tokens=24, do_sample=False)
    torch.manual_seed(0)
    sampled = model.generate(ids, max_new_tokens=24, do_sample=True, top_k=20)
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
text = generator("import os", max_new_tokens=12, do_sample=False)[0]["generated_text"]
torch.save({"logits": logits, "greedy": greedy, "sampled": sampled, "pipeline": text}, out)
"""


def test_remote_code_loads_without_photon_hf(exported, tmp_path):
    model, folder = exported
    out = tmp_path / "remote.pt"
    run_python(REMOTE, str(folder), str(out), isolated=True, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    remote = torch.load(out)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(["def parse(text):\n    return"], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        greedy = model.generate(ids, max_new_tokens=24, do_sample=False)
        torch.manual_seed(0)
        sampled = model.generate(ids, max_new_tokens=24, do_sample=True, top_k=20)
        prompt = tokenizer(["import os"], return_tensors="pt").input_ids
        continuation = model.generate(prompt, max_new_tokens=12, do_sample=False)
    torch.testing.assert_close(remote["logits"], logits, rtol=0, atol=1e-6)
    assert torch.equal(remote["greedy"], greedy) and torch.equal(remote["sampled"], sampled)
    assert remote["pipeline"] == tokenizer.decode(continuation[0])


REMOTE_LORA = BLOCK_PHOTON + """
import sys, time, torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

folder, out = sys.argv[1], sys.argv[2]
assert "photon_hf" not in sys.modules
# A plain LoraConfig names no target_modules: the exported configuration_photon.py registered PHOTON's defaults.
model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True),
                       LoraConfig(task_type="CAUSAL_LM", r=4))
adapted = sorted({name.split(".")[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")})
stacks = len({name.rsplit(".", 3)[0] for name, module in model.named_modules() if name.endswith("q_proj")})

# TRL's SFTTrainer with LoRA, a few CPU steps on the exported model and tokenizer.
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
texts = Dataset.from_dict({"text": [f"def f{i}(x):\\n    return x + {i}\\n" for i in range(16)]})
args = SFTConfig(output_dir=sys.argv[3], max_steps=3, per_device_train_batch_size=4, max_length=64,
                 learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True)
base = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
trainer = SFTTrainer(model=base, args=args, train_dataset=texts, processing_class=tokenizer,
                     peft_config=LoraConfig(task_type="CAUSAL_LM", r=4))
trainable = sorted(name for name, p in trainer.model.named_parameters() if p.requires_grad)
before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
trainer.train()
moved = sum(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters() if name in before)
losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
torch.save({"adapted": adapted, "stacks": stacks, "trainable": trainable, "moved": moved, "losses": losses}, out)
"""


def test_remote_code_registers_peft_defaults_and_trains_with_trl(exported, tmp_path):
    """Without photon_hf, a plain `LoraConfig(task_type="CAUSAL_LM")` adapts every stack's attention and MLP
    projections of an exported model, and TRL's SFTTrainer trains such an adapter."""
    model, folder = exported
    out = tmp_path / "lora.pt"
    run_python(REMOTE_LORA, str(folder), str(out), str(tmp_path / "sft"), isolated=True,
               env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    result = torch.load(out)
    assert result["adapted"] == sorted(lora_target_modules())
    stacks = {name.rsplit(".", 3)[0] for name, _ in model.named_modules() if name.endswith("q_proj")}
    assert result["stacks"] == len(stacks) == 2 * model.config.num_levels  # an encoder and a decoder per level
    assert result["trainable"] and all("lora_" in name for name in result["trainable"])
    assert len(result["trainable"]) == 2 * len(lora_target_modules()) * len(stacks)  # lora_A and lora_B each
    assert result["moved"] > len(result["trainable"]) // 2  # the adapter trained (52 of the 56 matrices move)
    assert len(result["losses"]) == 3 and all(math.isfinite(loss) for loss in result["losses"])


class _Uploads:
    """Stands in for the Hub: records what create_commit would send."""

    def __init__(self, monkeypatch):
        self.files: dict[str, bytes] = {}
        self.repos: list[str] = []
        uploads = self

        def create_repo(api, repo_id, *args, **kwargs):
            uploads.repos.append(repo_id)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_commit(api, repo_id, operations, *args, **kwargs):
            for op in operations:
                source = op.path_or_fileobj
                content = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
                uploads.files[op.path_in_repo] = content
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="", commit_description="",
                oid="0" * 40,
            )

        def upload_folder(api, *, repo_id, folder_path, **kwargs):  # what photon_hf.hub.push_folder_to_hub calls
            uploads.folder_uploads.append(repo_id)
            for path in Path(folder_path).rglob("*"):
                uploads.files[path.relative_to(folder_path).as_posix()] = path.read_bytes()
            return create_commit(api, repo_id, [])

        self.folder_uploads: list[str] = []
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
        monkeypatch.setattr(huggingface_hub.ModelCard, "load", classmethod(lambda cls, *a, **k: cls("---\n---\n")))


def test_push_to_hub_uploads_weights_code_and_auto_map(exported, monkeypatch):
    model, folder = exported
    uploads = _Uploads(monkeypatch)
    push_folder_to_hub(folder, "someone/photon-tiny")
    assert uploads.repos == uploads.folder_uploads == ["someone/photon-tiny"]
    assert set(uploads.files) == EXPECTED_FILES
    for name in EXPECTED_FILES:
        assert uploads.files[name] == (folder / name).read_bytes(), name

    # The stock PreTrainedModel.push_to_hub sends the same model files when run inside auto_class_registration.
    uploads.files.clear()
    with auto_class_registration(model):
        model.push_to_hub("someone/photon-tiny")
    assert {"config.json", "model.safetensors", "generation_config.json", *SOURCES} <= set(uploads.files)
    assert json.loads(uploads.files["config.json"])["auto_map"] == AUTO_MAP
    assert uploads.files["modeling_photon.py"] == (folder / "modeling_photon.py").read_bytes()
