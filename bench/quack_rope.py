"""RoPE in the `Wqkv` GEMM's epilogue (quack), against the GEMM + the `rotate_qk` pass the layers run now.

    python -m bench.quack_rope [--autotune]   # CUDA, quack-kernels installed (it comes with flash-attn-4)

quack's GEMM epilogues rotate adjacent output-column pairs. ModernBERT rotates halves (`rotate_half`: pair
(j, j + head_dim/2)). Permuting each head's q and k rows of `Wqkv` so that those pairs sit side by side
(`pair_rows`) makes them adjacent pairs; q.k is unchanged when q and k share the permutation, so
attention may consume the permuted layout as it is. Two epilogues:

- `posfreq` (`quack.epilogue.rotary.rope_posfreq_epi`): cos/sin computed in the epilogue from each token's position
  and a per-column frequency table; v's columns have frequency 0, an exact identity, so `Wqkv` stays one GEMM.
- `table` (`rotary_cos_sin_load`): a `(tokens, head_dim)` interleaved cos/sin table broadcast over heads; v must not
  rotate, so `Wv` is a GEMM of its own writing into the same `(tokens, 3 * hidden)` buffer.

The script checks q, k (permuted back) and v against the layers' path, and times each as GPU kernel time; then the
backward's in-place inverse rotation (`rotate_qk(..., inverse=True)`) in both layouts.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autotune", action="store_true", help="also quack's autotuner on the posfreq GEMM")
    args = parser.parse_args()
    if gemm_epilogue is None:
        raise SystemExit("needs quack-kernels (pip install flash-attn-4, or quack-kernels)")
    from quack.epilogue.rotary import make_interleaved_inv_freq, rope_posfreq_epi
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
    rotary = modeling.ClinicalModernBertRotaryEmbedding(head_dim, 10000.0).cuda()
    cos, sin = rotary(positions)  # (T, 1, 64) fp32
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    wqkv = torch.randn(3 * hidden, hidden, device="cuda", dtype=torch.bfloat16) * hidden**-0.5

    # The layers now: quack's GEMM, then rotate q and k (and copy v) into the buffer attention and backward read.
    def current():
        qkv = gemm(x, wqkv.t(), tuned=False).view(tokens, 3, heads, head_dim)
        rotated = torch.empty_like(qkv)
        modeling.rotate_qk(qkv, cos, sin, rotated, copy_v=True)
        return rotated

    def plain_gemm():
        return gemm(x, wqkv.t(), tuned=False)

    w_perm = modeling.pair_rows(wqkv, head_dim)
    w_qk, w_v = w_perm[: 2 * hidden], w_perm[2 * hidden:]
    table = torch.stack((cos[:, 0, :half], sin[:, 0, :half]), dim=-1).reshape(tokens, head_dim).contiguous()
    freq = make_interleaved_inv_freq(rotary.inv_freq.double(), 2 * hidden, hidden).cuda()
    pos = positions.float()
    out = torch.empty(tokens, 3 * hidden, device="cuda", dtype=torch.bfloat16)

    def table_fused(config=None):
        rope_pairs_epi(x, w_qk.t(), out={"D": out[:, : 2 * hidden]}, tuned=False, config=config, cs=table)
        gemm(x, w_v.t(), out=out[:, 2 * hidden:], tuned=False)
        return out

    def posfreq(config=None, tuned=False):
        rope_posfreq_epi(x, w_perm.t(), out={"D": out}, tuned=tuned, config=config, pos=pos, freq=freq)
        return out

    reference = current().float()

    def errors(got: torch.Tensor) -> str:
        got = got.float().view(tokens, 3, heads, head_dim).clone()
        got[:, :2] = got[:, :2].view(tokens, 2, heads, half, 2).transpose(-1, -2).reshape(tokens, 2, heads, head_dim)
        return " ".join(f"{(got[:, i] - reference[:, i]).abs().max().item() / reference[:, i].abs().max().item():.1e}"
                        for i in range(3))

    print(torch.cuda.get_device_name(), f"{tokens} tokens, Wqkv {hidden} -> {3 * hidden}, bf16")
    print(f"  max |fused - current| / max |current|, q/k/v: table {errors(table_fused())}, "
          f"posfreq {errors(posfreq())}")
    print(f"  quack GEMM alone              {kernel_time_ms(plain_gemm) * 1e3:7.1f} us")
    print(f"  now: GEMM + rotate_qk         {kernel_time_ms(current) * 1e3:7.1f} us")
    print(f"  table + Wv GEMM, untuned      {kernel_time_ms(table_fused) * 1e3:7.1f} us")
    capacity = torch.cuda.get_device_capability()[0]
    configs = {
        "192x128 c(1,2) pp": dict(tile_m=192, tile_n=128, cluster_m=1, cluster_n=2, pingpong=True),
        "128x128 c(1,2) pp": dict(tile_m=128, tile_n=128, cluster_m=1, cluster_n=2, pingpong=True),
        "128x128 c(2,1) pp": dict(tile_m=128, tile_n=128, cluster_m=2, cluster_n=1, pingpong=True),
        "128x256 c(2,1)": dict(tile_m=128, tile_n=256, cluster_m=2, cluster_n=1, pingpong=False),
        "256x128 c(1,2)": dict(tile_m=256, tile_n=128, cluster_m=1, cluster_n=2, pingpong=False),
    }
    pinned = {name: GemmConfig(**settings, is_dynamic_persistent=False, device_capacity=capacity)
              for name, settings in configs.items()}
    best = pinned["192x128 c(1,2) pp"]  # quack's rotary docstring: its best RoPE configuration on an H100
    print(f"  table, 192x128 c(1,2) pp      {kernel_time_ms(lambda: table_fused(best)) * 1e3:7.1f} us")
    print(f"  posfreq, untuned              {kernel_time_ms(posfreq) * 1e3:7.1f} us")
    for name, config in pinned.items():
        try:
            print(f"  posfreq, {name:20} {kernel_time_ms(lambda: posfreq(config)) * 1e3:7.1f} us   "  # noqa: B023
                  f"(errors {errors(posfreq(config))})")
        except Exception as error:  # a config this quack release rejects
            print(f"  posfreq, {name:20} failed: {type(error).__name__}: {str(error)[:120]}")
    # backward: the FA4 layers' in-place turn of the rotated gradient into the unrotated one, halves against pairs
    grad = torch.randn(tokens, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    for pairs in (False, True):
        elapsed = kernel_time_ms(lambda: modeling.rotate_qk(grad, cos, sin, grad, inverse=True, pairs=pairs))  # noqa: B023
        print(f"  backward: rotate_qk inverse in place, {'pairs' if pairs else 'halves'} {elapsed * 1e3:7.1f} us")
    if args.autotune:
        print(f"  posfreq, autotuned            {kernel_time_ms(lambda: posfreq(tuned=True)) * 1e3:7.1f} us")


if __name__ == "__main__":
    main()
