"""The plugin as vLLM finds it: through the `vllm.general_plugins` entry point alone, idempotently, without
`trust_remote_code`, for every kind of folder photon_hf writes; `import photon_hf` never loads vLLM; what PHOTON
cannot do is refused clearly."""

import subprocess
import sys

import pytest
import torch
from photon_vllm import MAX_MODEL_LEN, engine, greedy, photon_checkpoint, reference


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_vllm_finds_the_plugin_through_its_entry_point_alone():
    out = run_python(
        "import sys\n"
        "from vllm.plugins import load_general_plugins\n"
        "assert 'photon_hf' not in sys.modules\n"
        "load_general_plugins()\n"
        "from vllm import ModelRegistry\n"
        "from transformers import AutoConfig\n"
        "from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum\n"
        "print('PhotonForCausalLM' in ModelRegistry.get_supported_archs(), 'PHOTON_STATE' in "
        "MambaAttentionBackendEnum.__members__, AutoConfig.for_model('photon').__class__.__name__)\n"
    )
    assert out.split() == ["True", "True", "PhotonConfig"]


def test_registration_is_idempotent():
    """vLLM loads plugins once per process, but a process may also import and call `register` itself: nothing is
    registered twice (vLLM's backend registry refuses a second registration of a name)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.plugins import load_general_plugins
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    from photon_hf.vllm import register

    for _ in range(3):
        register()
        load_general_plugins()
    assert "PhotonForCausalLM" in ModelRegistry.get_supported_archs()
    assert MambaAttentionBackendEnum._member_names_.count("PHOTON_STATE") == 1
    assert MODELS_CONFIG_MAP["PhotonForCausalLM"].__name__ == "PhotonVllmConfig"


def test_import_photon_hf_loads_no_vllm():
    out = run_python("import sys, photon_hf\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'vllm'))")
    assert out.strip() == "[]"


def test_exported_folders_load_without_remote_code(tmp_path):
    """A folder from `export_for_hub` carries an `auto_map` and PHOTON's source files; vLLM loads it through the plugin
    (trust_remote_code stays off) and generates what the original does."""
    from photon_hf import PhotonForCausalLM, export_for_hub
    from photon_hf.data import byte_tokenizer

    source = photon_checkpoint(tmp_path / "source")
    exported = tmp_path / "exported"
    export_for_hub(PhotonForCausalLM.from_pretrained(source), exported, byte_tokenizer())
    assert (exported / "modeling_photon.py").exists()
    prompts, budgets = [[1, 2, 3], list(range(40))], [8, 8]
    with engine(exported, trust_remote_code=False) as llm:
        assert greedy(llm, prompts, budgets) == reference(source, prompts, budgets)


def test_a_folder_from_photon_hf_train_loads(tmp_path):
    """`photon-hf train` on a small local text file: the folder it writes serves as it is."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    out = tmp_path / "trained"
    result = subprocess.run(
        ["photon-hf", "train", "--size", "tiny", "--dataset", str(corpus), "--max-steps", "2", "--block-size", "64",
         "--output-dir", str(out), "--batch-size", "2", "--eval-blocks", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    prompts, budgets = [list(b"def f"), list(b"    return x")], [6, 6]
    with engine(out) as llm:
        assert greedy(llm, prompts, budgets) == reference(out, prompts, budgets)


@pytest.mark.parametrize("options, refused", [
    (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}),
     "speculative decoding"),
    (dict(kv_cache_dtype="fp8"), "KV-cache dtype"),
    (dict(tensor_parallel_size=2, hf_overrides=dict(num_key_value_heads=1)),
     r"key/value heads \(1\) do not split evenly over 2 ranks"),
])
def test_what_photon_cannot_do_is_refused_at_start_up(tmp_path, options, refused):
    folder = photon_checkpoint(tmp_path / "refused")
    with pytest.raises(Exception, match=refused), engine(folder, **options):
        pass


def test_prefix_caching_is_turned_off_with_a_warning_and_prompt_logprobs_are_refused(tmp_path):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.inputs import TokensPrompt

    folder = photon_checkpoint(tmp_path / "prefix")
    prompts, budgets = [list(range(20)), list(range(20)) + [7, 8]], [6, 6]
    with engine(folder, enable_prefix_caching=True) as llm:
        assert not llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        assert greedy(llm, prompts, budgets) == reference(folder, prompts, budgets)
        with pytest.raises(VLLMValidationError, match="prompt log-probabilities"):
            llm.generate(TokensPrompt(prompt_token_ids=[1, 2, 3]), SamplingParams(max_tokens=2, prompt_logprobs=1))


def test_the_state_page_is_kv_cache_bytes_for_every_preset():
    from photon_hf import PHOTON_PRESETS, kv_cache_bytes, photon_preset
    from photon_hf.vllm.state import state_layout, state_page_bytes

    for name in PHOTON_PRESETS:
        for overrides in (dict(), dict(decoder_lookback=8), dict(decoder_input="self")):
            config = photon_preset(name, **overrides)
            content, page = state_page_bytes(config, 2048, torch.bfloat16)
            assert content == kv_cache_bytes(config, 2048) and page % 8 == 0 and page - content < 8
            sizes = [dtype.itemsize for _, _, dtype in state_layout(config, MAX_MODEL_LEN, torch.bfloat16)]
            assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_packed_linear_is_bit_equal_to_the_linear_it_replaces(dtype):
    """`PackedLinear` (the weight packed once for oneDNN) against `nn.Linear` (packed again at every call): the
    same bits at every batch size a step can bring, with and without a bias, for the shapes of the CPU presets and
    the paper's 600M; a shared weight (a tied head) stays the same tensor."""
    from torch import nn

    from photon_hf.vllm.model import PackedLinear, packs_weights

    assert packs_weights(dtype)
    torch.manual_seed(0)
    for features, bias in [((64, 192), False), ((256, 768), False), ((768, 256), False), ((1024, 256), True),
                           ((1664, 4096), False), ((256, 259), False)]:
        linear = nn.Linear(*features, bias=bias).to(dtype)
        packed = PackedLinear(linear, keep_weight=True)
        assert packed.weight is linear.weight
        for rows in [1, 3, 16, 33, 130, 257]:
            x = torch.randn(2, rows, features[0], dtype=dtype)
            assert torch.equal(packed(x), linear(x)), (features, bias, rows)
    assert PackedLinear(linear, keep_weight=False).weight is None
    assert not packs_weights(torch.float32)  # fp32 keeps F.linear: MKL's product rounds differently from oneDNN's
