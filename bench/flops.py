"""Useful matmul FLOPs of ModernBERT, for MFU that is comparable between our model and transformers'.

What is counted (2 FLOPs per multiply-accumulate; elementwise work, norms, softmax and the embedding lookup are
not counted):

- **Linear layers of the encoder**, per real token and layer: `Wqkv` (h x 3h), attention `Wo` (h x h), `Wi`
  (h x 2I, the GeGLU input and gate) and MLP `Wo` (I x h): `4h^2 + 3hI` multiply-accumulates (biases ignored).
- **Attention scores and values**, per layer and document of n tokens: `QK^T` and `PV` each cost `h` (= heads x
  head_dim) multiply-accumulates per (query, key) pair that is attended. A global layer attends to all `n^2` pairs;
  a local layer only to pairs at distance <= `local_attention / 2` (64 in ModernBERT: at most 129 keys per query),
  `n + 2 * sum_{d=1..min(w, n-1)} (n - d)` pairs. Documents never attend to each other.
- **MLM head** on the tokens it must score: dense (h x h) + decoder (h x V).
- **Training** = 3 x forward (forward, then backward for activations and for weights), i.e. `6 N` per token for
  linear layers. Recomputation (e.g. FlashAttention's backward recomputing `QK^T`) is not useful work and is not
  counted.

MFU uses *useful* FLOPs for EVERY model: real (non-padding) tokens, attention within documents, and the head only on
the masked tokens (our sparse head). transformers' default dense head also scores the 70% unmasked tokens and its
padded batch computes padding and masked-out attention pairs; that extra work is not counted, so its MFU shows how
much of the hardware goes into work that matters, on the same scale as ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch


class Geometry(Protocol):
    """The config fields the FLOP count needs (a `ClinicalModernBertConfig` has them all)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    local_attention: int
    layer_types: list[str]


# Dense bf16 peak (TFLOP/s, no sparsity) by device-name substring, first match wins.
DEVICE_PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "A100": 312.0,
}


def default_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU, or None (MFU is then not reported unless --peak-tflops is given)."""
    for key, tflops in DEVICE_PEAK_TFLOPS.items():
        if key in device_name:
            return tflops
    return None


def linear_macs_per_token(config: Geometry) -> int:
    """Multiply-accumulates of the encoder's linear layers for one token, all layers."""
    h, inter = config.hidden_size, config.intermediate_size
    per_layer = h * 3 * h + h * h + h * 2 * inter + inter * h
    return config.num_hidden_layers * per_layer


def head_macs_per_token(config: Geometry) -> int:
    """Multiply-accumulates of the MLM head (dense + decoder) for one scored token."""
    return config.hidden_size * config.hidden_size + config.hidden_size * config.vocab_size


def attention_pairs(length: int, window: int | None) -> int:
    """(query, key) pairs attended in a document of `length` tokens; `window` is the half window or None (global)."""
    if length < 0:
        raise ValueError(f"document length {length} is negative")
    if window is None:
        return length * length
    reach = min(window, max(length - 1, 0))
    return length + 2 * (reach * length - reach * (reach + 1) // 2)


def attention_macs(config: Geometry, lengths: list[int]) -> int:
    """Multiply-accumulates of `QK^T` and `PV` over all layers for documents of these lengths."""
    half_window = config.local_attention // 2
    total = 0
    for layer_type in config.layer_types:
        window = half_window if layer_type == "sliding_attention" else None
        total += sum(2 * config.hidden_size * attention_pairs(n, window) for n in lengths)
    return total


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one step, split by where they go."""

    linear: int
    attention: int
    head: int

    @property
    def total(self) -> int:
        return self.linear + self.attention + self.head

    def to_dict(self) -> dict[str, int]:
        return {"linear": self.linear, "attention": self.attention, "head": self.head, "total": self.total}


def forward_flops(config: Geometry, lengths: list[int], head_tokens: int) -> FlopCount:
    """Forward FLOPs for documents of `lengths` tokens with the MLM head on `head_tokens` tokens (0: encoder only)."""
    return FlopCount(
        linear=2 * linear_macs_per_token(config) * sum(lengths),
        attention=2 * attention_macs(config, lengths),
        head=2 * head_macs_per_token(config) * head_tokens,
    )


def training_flops(config: Geometry, lengths: list[int], masked_tokens: int) -> FlopCount:
    """Useful FLOPs of one training step: 3 x the forward, with the head only on the masked tokens."""
    forward = forward_flops(config, lengths, masked_tokens)
    return FlopCount(3 * forward.linear, 3 * forward.attention, 3 * forward.head)


def inference_flops(config: Geometry, lengths: list[int]) -> FlopCount:
    """Useful FLOPs of one encoder forward (no head) over the real tokens."""
    return forward_flops(config, lengths, head_tokens=0)


def measure_matmul_tflops(device: torch.device | str, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """Achieved TFLOP/s of a square `size`^3 matmul: the practical ceiling MFU can be read against."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            torch.matmul(a, b)
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000
    else:
        begin = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        seconds = time.perf_counter() - begin
    return 2 * size**3 * repeats / seconds / 1e12
