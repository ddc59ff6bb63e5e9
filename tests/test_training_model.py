"""The Phi model: Hugging Face weight layout and logits, named configs, document-masked attention."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from phi_assets.training import attention
from phi_assets.training import model as phi


def _hf(cfg: phi.PhiConfig) -> transformers.PhiForCausalLM:
    fields = {
        k: v for k, v in cfg.hf_config().items() if k not in ("architectures", "model_type", "torch_dtype")
    }
    return transformers.PhiForCausalLM(transformers.PhiConfig(**fields)).eval()


def test_logits_equal_transformers_on_the_same_weights():
    torch.manual_seed(0)
    cfg = phi.debug_tiny()
    ours = phi.PhiForCausalLM(cfg).eval()
    hf = _hf(cfg)
    hf.load_state_dict(ours.state_dict(), strict=True)  # same names, same shapes
    ids = torch.randint(0, cfg.vocab_size, (2, 64))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-5


def test_an_exported_directory_loads_with_from_pretrained(tmp_path):
    torch.manual_seed(1)
    cfg = phi.debug_tiny(vocab_size=300)
    ours = phi.PhiForCausalLM(cfg).eval()
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg.hf_config()))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 40))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-5


def test_document_masking_equals_running_each_document_alone():
    """Two documents packed in one row with cu_seqlens and restarted positions give the logits each
    document gets on its own."""
    torch.manual_seed(2)
    cfg = phi.debug_tiny()
    m = phi.PhiForCausalLM(cfg).eval()
    a, b = torch.randint(0, cfg.vocab_size, (1, 20)), torch.randint(0, cfg.vocab_size, (1, 12))
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(20), torch.arange(12)])[None]
    with torch.no_grad():
        joint = m(packed, position_ids=positions, cu_seqlens=torch.tensor([0, 20, 32]))
        assert torch.allclose(joint[:, :20], m(a), atol=1e-5) and torch.allclose(joint[:, 20:], m(b), atol=1e-5)
        assert not torch.allclose(m(packed)[:, 20:], m(b), atol=1e-3)  # unmasked, b sees a


def test_document_masking_holds_in_every_row_of_a_batch():
    """Two packed rows (three documents over 2 x 16 tokens, one crossing the row boundary as the loader
    packs them): every row's documents get the logits they get alone. With heads == batch a mask
    broadcast over heads instead of rows would pass a one-row test and fail here."""
    torch.manual_seed(3)
    cfg = phi.debug_tiny()  # 2 heads
    m = phi.PhiForCausalLM(cfg).eval()
    docs = [torch.randint(0, cfg.vocab_size, (1, n)) for n in (10, 6, 16)]
    packed = torch.cat(docs, dim=1).view(2, 16)
    positions = torch.cat([torch.arange(10), torch.arange(6), torch.arange(16)]).view(2, 16)
    with torch.no_grad():
        joint = m(packed, position_ids=positions, cu_seqlens=torch.tensor([0, 10, 16, 32]))
        assert torch.allclose(joint[0, :10], m(docs[0])[0], atol=1e-5)
        assert torch.allclose(joint[0, 10:], m(docs[1])[0], atol=1e-5)
        assert torch.allclose(joint[1], m(docs[2])[0], atol=1e-5)


@pytest.mark.parametrize(("recipe", "millions"), [(phi.phi1, 1418), (phi.phi1_small, 357), (phi.phi2, 2780)])
def test_named_configs_have_the_published_sizes(recipe, millions):
    with torch.device("meta"):
        m = phi.PhiForCausalLM(recipe())
    assert round(m.num_params() / 1e6) == millions
    assert recipe().rotary_dim == 32


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_heads"):
        phi.PhiConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="rotary_dim"):
        phi.PhiConfig(rotary_dim=65)


@pytest.mark.skipif(
    not torch.cuda.is_available() or attention.flash_attn_kernels() is None,
    reason="flash-attn runs only on CUDA with the flash-attn package (install .[gpu] on a GPU machine)",
)
def test_flash_attn_and_sdpa_agree_on_cuda(monkeypatch):
    """The two attention backends give the same logits in bf16, packed documents included."""
    torch.manual_seed(4)
    cfg = phi.PhiConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=1024,
        num_layers=2,
        num_heads=4,
        rotary_dim=16,
        resid_pdrop=0.0,
        attention_dropout=0.0,
    )
    m = phi.PhiForCausalLM(cfg).cuda().eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 128), device="cuda")
    positions = torch.cat([torch.arange(100), torch.arange(156)]).view(2, 128).cuda()
    cu = torch.tensor([0, 100, 256], device="cuda", dtype=torch.int32)
    out = {}
    for name in ("flash", "sdpa"):
        monkeypatch.setenv("PHI_ATTENTION", name)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            out[name] = (m(ids).float(), m(ids, position_ids=positions, cu_seqlens=cu).float())
    for flash, sdpa in zip(out["flash"], out["sdpa"], strict=True):
        assert (flash - sdpa).abs().max().item() < 0.05
