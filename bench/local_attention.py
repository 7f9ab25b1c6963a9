"""ModernBERT's local attention (a window of +-64 tokens) over packed documents: which kernel is fastest.

    python -m bench.local_attention            # CUDA: times each kernel, forward + backward, one layer's shapes
    python -m bench.local_attention --check    # CPU: the block mask below equals the dense local/document mask
    python -m bench.local_attention --ours     # CUDA: the model's own local-attention kernels (RoPE inside) vs FA4

FlashAttention-2 (`torch.nn.attention.varlen`, `window_size=(64, 64)`) tiles queries and keys by 128, so a block of
128 queries touches 3 key blocks (384 keys) for the 129 it needs. FlexAttention can skip blocks by a `BlockMask`;
with 64-token blocks it would touch 192 keys per query. This script measures both against FA2, on the documents of
the bench's `train-1024` and `train-8192-x4` shapes packed back to back (`bench.data.sample_document_lengths`; base
geometry: 12 heads of 64, bf16), and checks each output against FA2's. Where `flash-attn-4` is installed on a
Hopper/Blackwell GPU, it also times FlashAttention-4 through the model's own op (`varlen_kernel="flash-attn-4"`),
local and global, against FA2 (outputs and gradients).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench import SHAPES  # noqa: E402
from bench.data import sample_document_lengths  # noqa: E402

WINDOW = 64  # ModernBERT: local_attention = 128, i.e. 64 tokens each side
FLEX_TILES_64 = {"BLOCK_M": 64, "BLOCK_N": 64}  # the kernel tile must divide the 64-token sparse block


def local_block_mask(doc_id: torch.Tensor, block: int) -> BlockMask:
    """The BlockMask of +-WINDOW attention within documents, built on the device without a host sync.

    Query block i can only reach key blocks i-1, i and i+1 (WINDOW <= block). A neighbour that shares no document
    with block i is dropped. The diagonal block is "full" (no mask evaluated) when it lies in one document and every
    pair in it is inside the window (block <= WINDOW + 1).
    """
    if WINDOW > block:
        raise ValueError(f"block {block} must be >= the window {WINDOW}")
    n_blocks = doc_id.numel() // block
    index = torch.arange(n_blocks, device=doc_id.device)
    candidates = torch.stack([index - 1, index, index + 1], -1)
    in_range = (candidates >= 0) & (candidates < n_blocks)
    candidates = candidates.clamp(0, n_blocks - 1)
    first, last = doc_id[::block], doc_id[block - 1::block]
    shares_document = torch.stack([last[candidates[:, 0]] >= first, torch.ones_like(first, dtype=torch.bool),
                                   first[candidates[:, 2]] <= last], -1)
    reachable = in_range & shares_document
    full = torch.zeros_like(reachable)
    full[:, 1] = (first == last) & (block <= WINDOW + 1)
    partial = reachable & ~full

    def packed(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True)  # selected blocks first
        indices = torch.nn.functional.pad(torch.gather(candidates, 1, order), (0, n_blocks - 3))
        return selected.sum(-1).to(torch.int32)[None, None], indices.to(torch.int32)[None, None]

    def mask_mod(batch, head, q_index, kv_index):
        return (doc_id[q_index] == doc_id[kv_index]) & ((q_index - kv_index).abs() <= WINDOW)

    return BlockMask.from_kv_blocks(*packed(partial), *packed(full), BLOCK_SIZE=block, mask_mod=mask_mod)


def packed_inputs(lengths: list[int], heads: int, head_dim: int, device: str, dtype: torch.dtype, block: int):
    """q, k, v as [tokens, heads, head_dim], padded to a multiple of `block` with one padding document."""
    tokens = sum(lengths)
    padded = -(-tokens // block) * block
    doc_id = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    doc_id = torch.cat([doc_id, torch.full((padded - tokens,), len(lengths), device=device)])
    q, k, v = (torch.randn(padded, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
    cu_seqlens = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    return doc_id, q, k, v, cu_seqlens, tokens


def check_on_cpu() -> None:
    lengths = [100, 37, 250, 60, 129]
    for block in (64, 128):
        doc_id, q, k, v, _, tokens = packed_inputs(lengths, 2, 16, "cpu", torch.float32, block)
        block_mask = local_block_mask(doc_id, block)
        dense = block_mask.to_dense()[0, 0]  # which (query block, key block) pairs the kernel visits
        position = torch.arange(doc_id.numel())
        allowed = (doc_id[:, None] == doc_id[None]) & ((position[:, None] - position[None]).abs() <= WINDOW)
        needed = allowed.view(dense.shape[0], block, dense.shape[1], block).any(3).any(1)
        assert torch.equal(dense.bool(), needed), f"block {block}: the block mask skips or adds blocks"
        heads_first = [x.transpose(0, 1)[None] for x in (q, k, v)]
        out = flex_attention(*heads_first, block_mask=block_mask)[0].transpose(0, 1)
        reference = torch.nn.functional.scaled_dot_product_attention(*(x[0] for x in heads_first),
                                                                     attn_mask=allowed).transpose(0, 1)
        error = (out[:tokens] - reference[:tokens]).abs().max().item()
        print(f"block {block}: visits exactly the needed blocks; max |flex - dense reference| {error:.2e}")
        assert error < 1e-4


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def measure(name: str, lengths: list[int], block: int, flex) -> None:
    from torch.nn.attention.varlen import varlen_attn

    doc_id, q, k, v, cu_seqlens, tokens = packed_inputs(lengths, 12, 64, "cuda", torch.bfloat16, block)
    q, k, v = (x[:tokens].requires_grad_() for x in (q, k, v))
    grad_out = torch.randn_like(q)
    longest = max(lengths)

    def fa2(window):
        def step():
            out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, window_size=window)
            out.backward(grad_out)
        return step

    if block == 128:
        print(f"{name}: {tokens} tokens in {len(lengths)} documents; FA2 varlen forward + backward: "
              f"local {time_ms(fa2((WINDOW, WINDOW))):.3f} ms, global {time_ms(fa2((-1, -1))):.3f} ms")
        measure_flash_attn_4(name, q, k, v, grad_out, cu_seqlens, longest)
    block_mask = local_block_mask(doc_id, block)
    options = None if block == 128 else FLEX_TILES_64
    padding = doc_id.numel() - tokens
    qf, kf, vf = (torch.nn.functional.pad(x.detach(), (0, 0, 0, 0, 0, padding)).transpose(0, 1)[None].contiguous()
                  .requires_grad_() for x in (q, k, v))
    grad_f = torch.randn_like(qf)

    def forward_backward():
        flex(qf, kf, vf, block_mask=block_mask, kernel_options=options).backward(grad_f)

    def forward():
        with torch.no_grad():
            return flex(qf, kf, vf, block_mask=block_mask, kernel_options=options)

    try:
        with torch.no_grad():
            reference = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, window_size=(WINDOW, WINDOW))
        error = (forward()[0].transpose(0, 1)[:tokens].float() - reference.float()).abs().max().item()
        print(f"{name}: flex, {block}-token blocks: max |flex - FA2| {error:.4f}; "
              f"forward {time_ms(forward):.3f} ms, forward + backward {time_ms(forward_backward):.3f} ms")
    except Exception as error:  # a kernel this torch cannot build is a result, not a crash
        print(f"{name}: flex, {block}-token blocks: FAILED {type(error).__name__}: {str(error)[:200]}")


def measure_flash_attn_4(name: str, q, k, v, grad_out, cu_seqlens, longest: int) -> None:
    """FA4 (the model's op over `flash-attn-4`) against FA2 on the same tensors: error and time, local and global."""
    from torch.nn.attention.varlen import varlen_attn

    from modeling_clinical_modernbert import resolve_varlen_kernel

    if resolve_varlen_kernel("auto", q.device, q.shape[-1], training_dropout=False) != "flash-attn-4":
        print(f"{name}: FA4: flash-attn-4 not installed or not a Hopper/Blackwell GPU")
        return
    fa4 = torch.ops.clinical_modernbert.fa4_varlen_fwd
    scale = q.shape[-1] ** -0.5

    def run(kernel: str, window: int, backward: bool = True):
        for x in (q, k, v):
            x.grad = None
        if kernel == "FA4":
            out = fa4(q, k, v, cu_seqlens, cu_seqlens, longest, longest, scale, window, window, False)[0]
        else:
            out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, window_size=(window, window))
        if backward:
            out.backward(grad_out)
        return [out.detach(), *(x.grad for x in (q, k, v))] if backward else out

    for label, window in (("local", WINDOW), ("global", -1)):
        errors = [(a.float() - b.float()).abs().max().item() for a, b in zip(run("FA4", window), run("FA2", window))]
        times = {}
        for kernel in ("FA2", "FA4"):
            times[kernel] = time_ms(partial(run, kernel, window))
            with torch.no_grad():
                times[kernel + " fwd"] = time_ms(partial(run, kernel, window, backward=False))
        print(f"{name}: {label}: forward + backward FA2 {times['FA2']:.3f} ms, FA4 {times['FA4']:.3f} ms "
              f"({times['FA2'] / times['FA4']:.2f}x); forward FA2 {times['FA2 fwd']:.3f}, FA4 {times['FA4 fwd']:.3f} "
              f"ms; max |FA4 - FA2| out/dq/dk/dv {' '.join(f'{e:.4f}' for e in errors)}")


def kernel_time_ms(fn, repeats: int = 10) -> float:
    """GPU time of `fn`'s kernels (summed from a profile): no Python launch cost, which a compiled model does not
    pay (called eagerly, our op launches its Triton kernels from Python)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    kernels = [event for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    return sum(event.device_time_total for event in kernels) / repeats / 1e3


# (BLOCK_M, BLOCK_N, warps, stages) per kernel, tried by `--ours` (the model's defaults: `_LOCAL_ATTENTION_TILES`).
OUR_TILES = {
    "forward": [(64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 3)],
    "dq": [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (64, 32, 4, 3), (32, 64, 4, 2)],
    "dkdv": [(32, 64, 4, 3), (64, 64, 4, 3), (32, 64, 4, 2), (16, 64, 4, 3), (32, 64, 2, 3), (32, 128, 4, 3)],
}


def measure_ours(name: str, lengths: list[int]) -> None:
    """The model's `local_attention` (RoPE inside) against the op it replaces on the local layers, FA4 with RoPE
    inside (`fa4_rotary_varlen_fwd`, where installed), on the same packed qkv: errors, then kernel time per tile."""
    import modeling_clinical_modernbert as modeling

    tokens, heads, head_dim, scale = sum(lengths), 12, 64, 0.125
    qkv = torch.randn(tokens, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu_seqlens = torch.tensor([0, *lengths], device="cuda").cumsum(0).to(torch.int32)
    positions = torch.cat([torch.arange(n, device="cuda") for n in lengths])
    cos, sin = modeling.ClinicalModernBertRotaryEmbedding(head_dim, 10000.0).cuda()(positions)
    grad_out = torch.randn(tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    bounds = modeling.local_attention_bounds(cu_seqlens, tokens, WINDOW)
    fa4 = None
    if modeling.resolve_varlen_kernel("auto", qkv.device, head_dim, training_dropout=False) == "flash-attn-4":
        fa4 = torch.ops.clinical_modernbert.fa4_rotary_varlen_fwd

    def run(kernel: str, backward: bool = True):
        qkv.grad = None
        if kernel == "FA4":
            out = fa4(qkv, cos, sin, cu_seqlens, max(lengths), scale, WINDOW, WINDOW, False)[0]
        else:
            out = modeling.local_attention(qkv, cos, sin, bounds, WINDOW, scale)
        if backward:
            out.backward(grad_out)
        return out

    def no_grad(kernel: str):
        with torch.no_grad():
            run(kernel, backward=False)

    print(f"{name}: {tokens} tokens in {len(lengths)} documents, local layer (+-{WINDOW}), RoPE inside, "
          "kernel time per call (profiled)")
    ours_out = run("ours").float()
    ours_grad = qkv.grad.float()
    if modeling._triton_failed:  # the op fell back to torch code: timing it would be meaningless
        raise RuntimeError(f"Triton kernels failed: {modeling._triton_failed}")
    if fa4 is not None:
        fa4_out = run("FA4").float()
        errors = [(ours_out - fa4_out).abs().max().item()]
        errors += [(ours_grad[:, i] - qkv.grad[:, i].float()).abs().max().item() for i in range(3)]
        forward, both = kernel_time_ms(partial(no_grad, "FA4")), kernel_time_ms(partial(run, "FA4"))
        print(f"  FA4 + RoPE           forward {forward * 1e3:7.1f} us   backward {(both - forward) * 1e3:7.1f} us   "
              f"total {both * 1e3:7.1f} us")
        print(f"  max |ours - FA4| out/dq/dk/dv: {' '.join(f'{e:.4f}' for e in errors)}")
    defaults = dict(modeling._LOCAL_ATTENTION_TILES)
    for direction, tiles in OUR_TILES.items():
        for tile in tiles:
            modeling._LOCAL_ATTENTION_TILES.update(defaults, **{direction: tile})
            forward, both = kernel_time_ms(partial(no_grad, "ours")), kernel_time_ms(partial(run, "ours"))
            print(f"  ours, {direction:7s} {str(tile):13s} forward {forward * 1e3:7.1f} us   backward "
                  f"{(both - forward) * 1e3:7.1f} us   total {both * 1e3:7.1f} us")
    modeling._LOCAL_ATTENTION_TILES.update(defaults)


def benchmark_ours() -> None:
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for name in ("train-1024", "train-8192-x4"):
        shape = SHAPES["cuda"][name]
        measure_ours(name, sample_document_lengths(shape.rows, shape.seq_len, shape.padding, seed=0))


def benchmark() -> None:
    flex = torch.compile(flex_attention, dynamic=False)
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for name in ("train-1024", "train-8192-x4"):
        shape = SHAPES["cuda"][name]
        lengths = sample_document_lengths(shape.rows, shape.seq_len, shape.padding, seed=0)
        for block in (128, 64):
            measure(name, lengths, block, flex)
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the block mask on the CPU")
    parser.add_argument("--ours", action="store_true",
                        help="the model's local-attention kernels against FA4 with RoPE inside, per tile")
    args = parser.parse_args()
    if args.check:
        check_on_cpu()
    else:
        benchmark_ours() if args.ours else benchmark()


if __name__ == "__main__":
    main()
