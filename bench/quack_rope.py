"""RoPE in the `Wqkv` GEMM's epilogue (quack), against the GEMM + the `rotate_qk` pass the layers run now.

    python -m bench.quack_rope          # CUDA, quack-kernels installed (it comes with flash-attn-4)

Written at the end of the fourteenth session, after its device time was spent: **not run yet**. It is the
measurement that decides the next lever of BENCHMARKS.md ("RoPE in `Wqkv`'s epilogue").

quack's GEMM epilogues can rotate adjacent column pairs by a `(tokens, head_dim)` table of interleaved cos/sin,
broadcast over heads (`quack.epilogue.rotary.rotary_cos_sin_load`). ModernBERT rotates halves (`rotate_half`: pair
(j, j + head_dim/2)). Permuting each head's q and k rows of `Wqkv` so that those pairs sit side by side
(`interleave_halves` per head) makes them adjacent pairs; q.k is unchanged when q and k share the permutation, so
attention may consume the permuted layout as it is. v must not rotate, so `Wv` is a GEMM of its own writing into
the same `(tokens, 3 * hidden)` buffer. This script checks the rotated q and k (permuted back) and v against the
layers' path, and times both as GPU kernel time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.local_attention import kernel_time_ms  # noqa: E402

try:
    from quack.epilogue.frontend import gemm_epilogue, pack, unpack
    from quack.epilogue.rotary import rotary_cos_sin_load
except ImportError:  # the epilogue must be a module-level function: quack keys compiled kernels by it
    gemm_epilogue = None
else:

    @gemm_epilogue(ops={"cs": rotary_cos_sin_load("cs")}, mode="acc_pair")
    def rope_pairs_epi(acc, cs):
        """Rotate adjacent output-column pairs by the table's (cos, sin) of the pair's frequency."""
        x1, x2 = unpack(acc)
        cos, sin = unpack(cs)
        return {"D": pack(x1 * cos - x2 * sin, x1 * sin + x2 * cos)}


def per_head_pairs(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows `[heads * head_dim, ...]` reordered per head `0, half, 1, half + 1, ...` (rotate_half's pairs adjacent)."""
    import modeling_clinical_modernbert as modeling

    heads = rows.shape[0] // head_dim
    return torch.stack([modeling.interleave_halves(head) for head in rows.view(heads, head_dim, -1)]).reshape(
        rows.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    if gemm_epilogue is None:
        raise SystemExit("needs quack-kernels (pip install flash-attn-4, or quack-kernels)")
    from quack.gemm_config import GemmConfig
    from quack.gemm_interface import gemm

    import modeling_clinical_modernbert as modeling
    from bench.bench import SHAPES
    from bench.data import sample_document_lengths

    torch.manual_seed(0)
    hidden, heads, head_dim, half = 768, 12, 64, 32
    shape = SHAPES["cuda"]["train-1024"]
    lengths = sample_document_lengths(shape.rows, shape.seq_len, shape.padding, seed=0)
    tokens = sum(lengths)
    positions = torch.cat([torch.arange(n, device="cuda") for n in lengths])
    cos, sin = modeling.ClinicalModernBertRotaryEmbedding(head_dim, 10000.0).cuda()(positions)  # (T, 1, 64) fp32
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    wqkv = torch.randn(3 * hidden, hidden, device="cuda", dtype=torch.bfloat16) * hidden**-0.5

    # The layers now: one GEMM, then rotate q and k (and copy v) into the buffer attention and backward read.
    def current():
        qkv = (x @ wqkv.t()).view(tokens, 3, heads, head_dim)
        rotated = torch.empty_like(qkv)
        modeling.rotate_qk(qkv, cos, sin, rotated, copy_v=True)
        return rotated

    # RoPE in the epilogue: permuted q/k rows, an interleaved (cos, sin) table per token, v by a GEMM of its own.
    w_qk = per_head_pairs(wqkv[: 2 * hidden], head_dim)
    w_v = wqkv[2 * hidden:]
    table = torch.stack((cos[:, 0, :half], sin[:, 0, :half]), dim=-1).reshape(tokens, head_dim).contiguous()
    out = torch.empty(tokens, 3 * hidden, device="cuda", dtype=torch.bfloat16)

    def fused(config=None):
        rope_pairs_epi(x, w_qk.t(), out={"D": out[:, : 2 * hidden]}, tuned=False, config=config, cs=table)
        gemm(x, w_v.t(), out=out[:, 2 * hidden:], tuned=False)
        return out

    reference = current().float()
    got = fused().float().view(tokens, 3, heads, head_dim)
    unpermuted = got.clone()
    unpermuted[:, :2] = got[:, :2].view(tokens, 2, heads, half, 2).transpose(-1, -2).reshape(tokens, 2, heads,
                                                                                              head_dim)
    errors = [(unpermuted[:, i] - reference[:, i]).abs().max().item() / reference[:, i].abs().max().item()
              for i in range(3)]
    print(torch.cuda.get_device_name(), f"{tokens} tokens, Wqkv {hidden} -> {3 * hidden}, bf16")
    print(f"  max |fused - current| / max |current|, q/k/v: {' '.join(f'{e:.1e}' for e in errors)}")
    print(f"  current: GEMM + rotate_qk   {kernel_time_ms(current) * 1e3:7.1f} us")
    print(f"  fused, untuned               {kernel_time_ms(fused) * 1e3:7.1f} us")
    # quack's rotary docstring: 192x128 tiles, cluster (1, 2), pingpong was its best RoPE configuration on an H100
    config = GemmConfig(tile_m=192, tile_n=128, cluster_m=1, cluster_n=2, pingpong=True, is_dynamic_persistent=False,
                        device_capacity=torch.cuda.get_device_capability()[0])
    print(f"  fused, 192x128 c(1,2) pp     {kernel_time_ms(lambda: fused(config)) * 1e3:7.1f} us")


if __name__ == "__main__":
    main()
