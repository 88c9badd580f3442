"""The model's PyTorch path: the references beside the kernels, and the copies exported Hub code falls back on."""

import torch

import photon_kernels as pk
from photon_hf import attention_photon as ap
from photon_hf.modeling_photon import PhotonRMSNorm


def test_the_model_runs_the_kernels_references():
    assert ap.causal_attention is pk.latent_attention_ref
    assert ap.window_attention is pk.chunk_local_attention_ref
    assert ap.cached_attention is pk.decode_attention_ref
    assert ap.rms_norm is pk.rms_norm_ref
    assert ap.REFERENCE_OPS.decode_attention is pk.decode_attention_ref


def test_fallbacks_equal_the_references_exactly():
    """Exported code runs without photon_kernels on the module's own copies: they must not drift."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        q = torch.randn(3, 4, 9, 8, dtype=dtype)
        k, v = torch.randn(3, 2, 9, 8, dtype=dtype), torch.randn(3, 2, 9, 8, dtype=dtype)
        for window in (None, 1, 4, 20):
            assert torch.equal(ap._causal_attention(q, k, v, window), pk.latent_attention_ref(q, k, v, window))
        assert torch.equal(ap._window_attention(q, k, v), pk.chunk_local_attention_ref(q, k, v))
        start, end = torch.tensor([0, 2, 5]), torch.tensor([9, 3, 6])
        assert torch.equal(ap._cached_attention(q[:, :, 0], k, v, start, end),
                           pk.decode_attention_ref(q[:, :, 0], k, v, start, end))
        x, weight = torch.randn(5, 16, dtype=dtype), torch.rand(16) + 0.5
        norm = PhotonRMSNorm(16, eps=1e-5)
        norm.weight.data.copy_(weight)
        assert torch.equal(ap._rms_norm(x, weight, 1e-5), pk.rms_norm_ref(x, weight, 1e-5))
        assert torch.equal(norm(x), pk.rms_norm_ref(x, weight, 1e-5))
