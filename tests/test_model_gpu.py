"""CUDA-only checks of the unpadded varlen backend (skipped without a GPU; run them on the device, see docs/gpu.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from bench.parity import measure
from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM, varlen_available

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def parity() -> dict:
    assert varlen_available(), "no varlen kernel: need torch >= 2.10 or flash_attn"
    return measure(num_layers=4)


def test_varlen_bf16_forward_within_3x_of_transformers(parity):
    row = parity["forward"]
    print(parity)
    assert row["ours_varlen_bf16"] <= 3 * row["transformers_sdpa_bf16"]
    assert row["ours_varlen_bf16"] < 2e-2


@pytest.mark.parametrize("grad", ["layer0_global_Wqkv", "layer1_local_Wqkv", "embeddings"])
def test_varlen_bf16_backward_within_3x_of_transformers(parity, grad):
    row = parity["backward"][grad]
    assert row["ours_varlen_bf16"] <= 3 * row["transformers_sdpa_bf16"], row


def test_varlen_packed_equals_padded_on_gpu():
    """cu_seqlens input through the varlen kernel gives the padded batch's outputs (bf16, same kernel)."""
    torch.manual_seed(0)
    model = ClinicalModernBertForMaskedLM(tiny_config(attention_backend="flash_attention_2")).cuda().bfloat16().eval()
    lengths = [37, 5, 20]
    docs = [torch.randint(5, 128, (n,), device="cuda") for n in lengths]
    padded = torch.zeros(3, 37, dtype=torch.long, device="cuda")
    mask = torch.zeros_like(padded)
    for i, doc in enumerate(docs):
        padded[i, : len(doc)], mask[i, : len(doc)] = doc, 1
    cu_seqlens = torch.tensor([0, 37, 42, 62], dtype=torch.int32, device="cuda")
    with torch.no_grad():
        by_mask = model(input_ids=padded, attention_mask=mask).logits[mask.bool()]
        by_cu = model(input_ids=torch.cat(docs)[None], cu_seqlens=cu_seqlens, max_seqlen=37).logits[0]
    assert (by_mask.float() - by_cu.float()).abs().max().item() <= 1e-2


def test_auto_backend_picks_varlen_in_bf16_and_sdpa_in_fp32():
    from modeling_clinical_modernbert import resolve_attention_backend

    qkv = torch.zeros(4, 3, 2, 8, device="cuda")
    assert resolve_attention_backend("auto", qkv.bfloat16(), training_dropout=False) == "flash_attention_2"
    assert resolve_attention_backend("auto", qkv, training_dropout=False) == "sdpa"


def test_compiled_training_step_matches_eager():
    """compile_layers='on' (Triton-fused blocks) trains like the plain path: same loss and gradients in bf16."""
    torch.manual_seed(1)
    model = ClinicalModernBertForMaskedLM(tiny_config(attention_backend="flash_attention_2")).cuda().bfloat16().train()
    ids = torch.randint(5, 128, (1, 300), device="cuda")
    labels = torch.where(torch.rand(ids.shape, device="cuda") < 0.3, ids, -100)
    cu_seqlens = torch.tensor([0, 100, 250, 300], dtype=torch.int32, device="cuda")

    def step(mode: str):
        model.config.compile_layers = mode
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels, cu_seqlens=cu_seqlens, max_seqlen=150).loss
        loss.backward()
        return loss.float(), model.model.layers[1].attn.Wqkv.weight.grad.float().clone()

    eager_loss, eager_grad = step("off")
    compiled_loss, compiled_grad = step("on")
    assert abs(compiled_loss.item() - eager_loss.item()) <= 1e-2 * abs(eager_loss.item())
    assert (compiled_grad - eager_grad).norm() <= 5e-2 * eager_grad.norm()
