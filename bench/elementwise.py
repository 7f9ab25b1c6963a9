"""Which formulation of ModernBERT's memory-bound pieces compiles to the fastest kernels (CUDA only).

    python -m bench.elementwise [--tokens 24576] [--steps 30]

The compiled layer of `train-1024` spends about a third of its GPU time in Triton kernels that inductor generates
for the norms, RoPE and GeGLU, and their backward. How a piece is written decides which kernels come out: a
`torch.cat` (GeGLU's `chunk` in backward, `rotate_half`) becomes a "pointwise cat" that evaluates every branch for
each output element. (In training on CUDA the model now runs GeGLU and RoPE as its own Triton kernels.) This script
times forward + backward of each piece, compiled as the model compiles its layers (`dynamic=True`, bf16 autocast
over fp32 parameters), on one layer's shapes of the base geometry (`--tokens` packed tokens), in several
formulations, and checks that each one's outputs and gradients equal the first formulation's.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.profile_step import time_step  # noqa: E402

HIDDEN, INTERMEDIATE, HEADS, HEAD_DIM, VOCAB = 768, 1152, 12, 64, 50368


def geglu_chunk(x, wi, wo):
    inputs, gate = F.linear(x, wi).chunk(2, dim=-1)
    return F.linear(F.gelu(inputs) * gate, wo)


def geglu_two_linear(x, wi, wo):
    inputs, gate = F.linear(x, wi[:INTERMEDIATE]), F.linear(x, wi[INTERMEDIATE:])
    return F.linear(F.gelu(inputs) * gate, wo)


def geglu_op(x, wi, wo):
    from modeling_clinical_modernbert import geglu

    return F.linear(geglu(F.linear(x, wi)), wo)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(x, cos, sin):
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


def rotary_roll(x, cos, sin):
    """rotate_half(x) * sin == roll(x, half) * (sin with its first half negated): no cat."""
    sin_signed = torch.cat((-sin[..., : HEAD_DIM // 2], sin[..., HEAD_DIM // 2 :]), -1)
    return (x.float() * cos + x.float().roll(HEAD_DIM // 2, -1) * sin_signed).to(x.dtype)


def qkv_one_linear(x, wqkv, cos, sin, rope=rotary):
    q, k, v = F.linear(x, wqkv).view(-1, 3, HEADS, HEAD_DIM).unbind(1)
    return rope(q, cos, sin), rope(k, cos, sin), v


def qkv_one_linear_roll(x, wqkv, cos, sin):
    return qkv_one_linear(x, wqkv, cos, sin, rope=rotary_roll)


def qkv_three_linears(x, wqkv, cos, sin):
    q, k, v = (F.linear(x, w).view(-1, HEADS, HEAD_DIM) for w in wqkv.chunk(3))
    return rotary(q, cos, sin), rotary(k, cos, sin), v


def ce_scatter(logits, labels):
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
    loss = (lse.squeeze(1) - logits32.gather(1, labels[:, None]).squeeze(1)).sum()
    grad = torch.exp(logits32 - lse).scatter_add(
        1, labels[:, None], torch.full((labels.shape[0], 1), -1.0, device=logits.device)
    )
    return loss, grad.to(logits.dtype)


def ce_iota(logits, labels):
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
    loss = (lse.squeeze(1) - logits32.gather(1, labels[:, None]).squeeze(1)).sum()
    onehot = torch.arange(logits.shape[1], device=logits.device)[None, :] == labels[:, None]
    return loss, (torch.exp(logits32 - lse) - onehot.float()).to(logits.dtype)


def embed(ids, weight, norm_weight):
    return F.layer_norm(F.embedding(ids, weight), (HIDDEN,), norm_weight, eps=1e-5).to(torch.bfloat16)


@contextlib.contextmanager
def concat_kernels():
    """inductor lowers every cat as a ConcatKernel (inputs written into their slices) instead of a pointwise cat."""
    import torch._inductor.config as inductor

    values = {name: 1 for name in ("max_pointwise_cat_inputs", "max_complex_pointwise_cat_inputs")
              if hasattr(inductor, name)}
    with inductor.patch(values):
        yield


def make_step(compiled: Callable, context: Callable | None, inputs: tuple, backward: bool) -> Callable[[], tuple]:
    """One forward (+ backward with fixed random output gradients) of `compiled` on `inputs`."""
    grads_out = None

    def step() -> tuple:
        nonlocal grads_out
        with context() if context else contextlib.nullcontext():  # backward is compiled at its first call
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = compiled(*inputs)
            outs = out if isinstance(out, tuple) else (out,)
            if backward:
                if grads_out is None:
                    generator = torch.Generator(device="cuda").manual_seed(0)
                    grads_out = [torch.randn(o.shape, device="cuda", dtype=o.dtype, generator=generator) for o in outs]
                for tensor in inputs:
                    if isinstance(tensor, torch.Tensor):
                        tensor.grad = None
                torch.autograd.backward(outs, grads_out)
        return outs

    return step


def compare(name: str, variants: dict[str, tuple[Callable, Callable | None]], make_inputs: Callable[[], tuple],
            steps: int, backward: bool = True) -> None:
    """Time each variant `label: (function, inductor-config context or None)` on the same inputs, and print its
    largest difference (outputs and input gradients) to the first variant. `function` is compiled unless its label
    says eager."""
    reference = None
    print(f"\n{name}")
    for label, (fn, context) in variants.items():
        torch._dynamo.reset()
        torch.manual_seed(0)
        inputs = make_inputs()
        step = make_step(fn if "eager" in label else torch.compile(fn, dynamic=True), context, inputs, backward)
        ms = time_step(step, warmup=3, steps=steps)
        outs = [o.float() for o in step()]
        grads = [t.grad.float() for t in inputs if isinstance(t, torch.Tensor) and t.grad is not None]
        if reference is None:
            reference, error = (outs, grads), 0.0
        else:
            error = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
                        for a, b in zip(outs + grads, reference[0] + reference[1]))
        print(f"  {label:<34} {ms * 1000:8.1f} us   max relative difference to the first: {error:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=24576)
    parser.add_argument("--masked", type=int, default=2048, help="rows of one cross-entropy chunk")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.elementwise times CUDA kernels; no CUDA device is available")
    torch.manual_seed(0)
    tokens, device = args.tokens, "cuda"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {tokens} tokens")

    def geglu_inputs():
        x = torch.randn(tokens, HIDDEN, device=device, dtype=torch.bfloat16, requires_grad=True)
        wi = (torch.randn(2 * INTERMEDIATE, HIDDEN, device=device) * 0.02).requires_grad_()
        wo = (torch.randn(HIDDEN, INTERMEDIATE, device=device) * 0.02).requires_grad_()
        return x, wi, wo

    compare("GeGLU MLP (Wi, gelu * gate, Wo), forward + backward", {
        "chunk (before)": (geglu_chunk, None),
        "chunk, ConcatKernel cats": (geglu_chunk, concat_kernels),
        "two linears on Wi's halves": (geglu_two_linear, None),
        "one linear, the geglu op (model)": (geglu_op, None),
    }, geglu_inputs, args.steps)

    def qkv_inputs():
        x = torch.randn(tokens, HIDDEN, device=device, dtype=torch.bfloat16, requires_grad=True)
        wqkv = (torch.randn(3 * HIDDEN, HIDDEN, device=device) * 0.02).requires_grad_()
        positions = torch.arange(tokens, device=device) % 1024
        freqs = positions[:, None].float() / (10000 ** (torch.arange(0, HEAD_DIM, 2, device=device) / HEAD_DIM))
        emb = torch.cat((freqs, freqs), -1)[:, None, :]
        return x, wqkv, emb.cos(), emb.sin()

    compare("Wqkv and RoPE on q and k, forward + backward", {
        "one linear, rotate_half (model)": (qkv_one_linear, None),
        "one linear, roll": (qkv_one_linear_roll, None),
        "three linears on Wqkv's thirds": (qkv_three_linears, None),
    }, qkv_inputs, args.steps)

    def ce_inputs():
        logits = torch.randn(args.masked, VOCAB, device=device, dtype=torch.bfloat16) * 4
        return logits, torch.randint(0, VOCAB, (args.masked,), device=device)

    compare("cross-entropy and its gradient over one chunk of logits (forward only)", {
        "scatter_add (before)": (ce_scatter, None),
        "iota == label (model)": (ce_iota, None),
    }, ce_inputs, args.steps, backward=False)

    def embed_inputs():
        ids = torch.randint(0, VOCAB, (tokens,), device=device)
        weight = (torch.randn(VOCAB, HIDDEN, device=device) * 0.02).requires_grad_()
        return ids, weight, torch.ones(HIDDEN, device=device, requires_grad=True)

    compare("embedding + norm + bf16 cast, forward + backward", {
        "eager (before)": (embed, None),
        "compiled (model)": (embed, None),
    }, embed_inputs, args.steps)

if __name__ == "__main__":
    main()
