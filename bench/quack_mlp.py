"""The GeGLU MLP on quack's fused GEMMs (`linear_kernel="quack"`) against cuBLAS + the `geglu` Triton op, one layer.

    python -m bench.quack_mlp            # CUDA, quack-kernels installed (it comes with flash-attn-4)

quack (Tri Dao's CuTe DSL kernels) has GEMMs whose epilogue applies a gated activation (forward: `Wi`'s output and
GeGLU's from one GEMM) or its gradient (backward: the gradient of `Wi`'s output from `Wo`'s, GeGLU's output
recomputed), and GEMMs that add a residual in the epilogue. The model registers an exact-GELU GeGLU with them
(`quack_gemms_available`). This script times the MLP block (residual included) at train-1024 (24,576 tokens, base
geometry), forward and backward, as GPU kernel time (profiled, no Python launch cost), checks outputs and gradients
against the torch path, and times plain GEMMs of every encoder shape against cuBLAS (`--tuned`: also quack's
autotuned configurations, slow to compile).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.local_attention import kernel_time_ms  # noqa: E402


def torch_mlp(hidden, x, wi, wo):
    """`linear_kernel="torch"`: cuBLAS matmuls around the `geglu` Triton op, and the residual add."""
    import modeling_clinical_modernbert as modeling

    return hidden + F.linear(modeling.geglu(F.linear(x, wi)), wo)


def quack_mlp(hidden, x, wi, wo):
    """`linear_kernel="quack"`: the model's `geglu_mlp` op over quack's fused GEMMs."""
    import modeling_clinical_modernbert as modeling

    return torch.ops.clinical_modernbert.geglu_mlp(hidden, x, modeling.interleave_halves(wi), wo)[0]


def compare_mlp(tokens: int, hidden_size: int, inter: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, device="cuda").to(torch.bfloat16).requires_grad_()
    x = torch.randn(tokens, hidden_size, device="cuda").to(torch.bfloat16).requires_grad_()
    wi = (torch.randn(2 * inter, hidden_size, device="cuda") * hidden_size**-0.5).to(torch.bfloat16).requires_grad_()
    wo = (torch.randn(hidden_size, inter, device="cuda") * inter**-0.5).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(tokens, hidden_size, device="cuda", dtype=torch.bfloat16)
    inputs = (hidden, x, wi, wo)
    reference = None
    for name, fn in (("torch (cuBLAS + geglu op)", torch_mlp), ("quack (fused epilogues)", quack_mlp)):
        def step(fn=fn, backward=True):
            for t in inputs:
                t.grad = None
            out = fn(*inputs)
            if backward:
                out.backward(grad)
            return out

        try:
            out = step()
        except Exception as error:  # a failure is a result here
            print(f"  {name:26s} FAILED {type(error).__name__}: {str(error)[:600]}", flush=True)
            continue
        got = [out.float(), *(t.grad.float() for t in inputs)]
        if reference is None:
            reference, errors = got, ""
        else:
            errors = "max |err| / max |torch| out/dhidden/dx/dWi/dWo: " + " ".join(
                f"{(a - b).abs().max().item() / b.abs().max().item():.1e}" for a, b in zip(got, reference))

        def forward(fn=fn):
            with torch.no_grad():
                fn(*inputs)

        fwd = kernel_time_ms(forward)
        both = kernel_time_ms(step)
        print(f"  {name:26s} forward {fwd * 1e3:7.1f} us  backward {(both - fwd) * 1e3:7.1f} us  "
              f"total {both * 1e3:7.1f} us  {errors}", flush=True)


def backward_parts(tokens: int, hidden_size: int, inter: int) -> None:
    """Kernel time of each piece of the MLP's backward, both ways, and of quack's dgated GEMM per setting."""
    from quack.gemm_interface import gemm_dgated

    import modeling_clinical_modernbert as modeling

    torch.manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(tokens, hidden_size, **bf16)
    normed = torch.randn(tokens, hidden_size, **bf16)
    preact = torch.randn(tokens, 2 * inter, **bf16)
    wi = torch.randn(2 * inter, hidden_size, **bf16) * hidden_size**-0.5
    wo = torch.randn(hidden_size, inter, **bf16) * inter**-0.5
    act = torch.randn(tokens, inter, **bf16)
    d_act = grad @ wo
    wo_k_major = wo.t().contiguous().t()
    parts = {
        "d_act = grad @ Wo (cuBLAS)": lambda: grad @ wo,
        "geglu backward op": lambda: torch.ops.clinical_modernbert.geglu_backward(d_act, preact),
        "dX = d_preact @ Wi (cuBLAS)": lambda: preact @ wi,
        "dWi = d_preact.T @ normed (cuBLAS)": lambda: preact.t() @ normed,
        "dWo = grad.T @ act (cuBLAS)": lambda: grad.t() @ act,
    }
    for dynamic in (True, False):
        for tuned in (False, True):
            parts[f"quack dgated (dynamic_scheduler={dynamic}, tuned={tuned})"] = (
                lambda d=dynamic, t=tuned: gemm_dgated(grad, wo, preact, activation=modeling.QUACK_GEGLU,
                                                       dynamic_scheduler=d, tuned=t))
            parts[f"quack dgated, Wo as (K, N) k-major copy (dynamic={dynamic}, tuned={tuned})"] = (
                lambda d=dynamic, t=tuned, w=wo_k_major: gemm_dgated(
                    grad, w, preact, activation=modeling.QUACK_GEGLU, dynamic_scheduler=d, tuned=t))
    for name, fn in parts.items():
        try:
            print(f"  {name:60s} {kernel_time_ms(fn) * 1e3:7.1f} us", flush=True)
        except Exception as error:  # a failure is a result here
            print(f"  {name:60s} FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)


def autotune(tokens: int, hidden_size: int, inter: int) -> None:
    """quack's autotuner on the MLP's three fused GEMMs (QUACK_PRINT_AUTOTUNING=1 prints each winner)."""
    from quack.gemm_interface import gemm_add, gemm_dgated, gemm_gated

    import modeling_clinical_modernbert as modeling

    torch.manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    hidden, normed, grad = (torch.randn(tokens, hidden_size, **bf16) for _ in range(3))
    wi = modeling.interleave_halves(torch.randn(2 * inter, hidden_size, **bf16) * hidden_size**-0.5)
    wo = torch.randn(hidden_size, inter, **bf16) * inter**-0.5
    preact = torch.randn(tokens, 2 * inter, **bf16)
    act = torch.randn(tokens, inter, **bf16)
    ops = {
        "gated forward": lambda t: gemm_gated(normed, wi.t(), activation=modeling.QUACK_GEGLU, tuned=t),
        "add (residual)": lambda t: gemm_add(act, wo.t(), hidden, tuned=t),
        "dgated backward": lambda t: gemm_dgated(grad, wo, preact, activation=modeling.QUACK_GEGLU, tuned=t),
    }
    for name, op in ops.items():
        untuned = kernel_time_ms(lambda op=op: op(False))
        tuned = kernel_time_ms(lambda op=op: op(True))
        print(f"  {name:16s} untuned {untuned * 1e3:7.1f} us  tuned {tuned * 1e3:7.1f} us", flush=True)


def compare_gemms(tokens: int, hidden: int, inter: int, tuned: bool) -> None:
    from quack.gemm_interface import gemm

    shapes = {
        "Wqkv fwd": (tokens, hidden, 3 * hidden), "attn Wo fwd": (tokens, hidden, hidden),
        "Wi fwd": (tokens, hidden, 2 * inter), "mlp Wo fwd": (tokens, inter, hidden),
        "Wqkv dX": (tokens, 3 * hidden, hidden), "Wi dX": (tokens, 2 * inter, hidden),
        "mlp Wo dX": (tokens, hidden, inter),
        "Wqkv dW": (3 * hidden, tokens, hidden), "attn Wo dW": (hidden, tokens, hidden),
        "mlp Wo dW": (hidden, tokens, inter),
    }
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16).t()  # (k, n), like a Linear weight's .T
        if "dW" in name:  # dW = dY^T X: A is a transposed activation
            a = torch.randn(k, m, device="cuda", dtype=torch.bfloat16).t()
            b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        flops = 2 * m * n * k
        t_torch = kernel_time_ms(lambda a=a, b=b: torch.mm(a, b))
        row = f"  {name:12s} {m:6d}x{k:6d}x{n:5d}  cuBLAS {t_torch * 1e3:7.1f} us ({flops / t_torch / 1e9:5.0f} TF/s)"
        for use_tuned in (False, True) if tuned else (False,):
            try:
                t_quack = kernel_time_ms(lambda a=a, b=b, t=use_tuned: gemm(a, b, tuned=t))
                err = (gemm(a, b, tuned=use_tuned).float() - torch.mm(a, b).float()).abs().max().item()
                row += f"  quack{' tuned' if use_tuned else ''} {t_quack * 1e3:7.1f} us ({flops / t_quack / 1e9:5.0f})"
                row += f" err {err:.1e}"
            except Exception as error:  # a failure is a result here
                row += f"  quack{' tuned' if use_tuned else ''} FAILED {type(error).__name__}: {str(error)[:120]}"
        print(row, flush=True)
    from quack.gemm_interface import gemm_add

    a = torch.randn(tokens, inter, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16).t()
    c = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    t_torch = kernel_time_ms(lambda: torch.addmm(c, a, b))
    t_quack = kernel_time_ms(lambda: gemm_add(a, b, c, tuned=False))
    err = (gemm_add(a, b, c, tuned=False).float() - torch.addmm(c, a, b).float()).abs().max().item()
    print(f"  mlp Wo fwd + residual: addmm (copy + cuBLAS) {t_torch * 1e3:7.1f} us, quack gemm_add "
          f"{t_quack * 1e3:7.1f} us, err {err:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=24576)
    parser.add_argument("--skip-gemms", action="store_true")
    parser.add_argument("--autotune", action="store_true",
                        help="only: quack's autotuner on the MLP's fused GEMMs, printing each winning config")
    parser.add_argument("--tuned", action="store_true", help="also quack's autotuned configs (slow to compile)")
    args = parser.parse_args()
    import quack

    import modeling_clinical_modernbert as modeling

    if not modeling.quack_gemms_available():
        raise SystemExit("quack-kernels is not usable here (see the warning above)")
    version = getattr(quack, "__version__", "?")
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "quack", version, flush=True)
    if args.autotune:
        os.environ["QUACK_PRINT_AUTOTUNING"] = "1"
        autotune(args.tokens, 768, 1152)
        return
    print(f"GeGLU MLP, {args.tokens} tokens, 768 -> 2 x 1152 -> 768, bf16, kernel time per call (profiled)")
    compare_mlp(args.tokens, 768, 1152)
    print("backward, piece by piece")
    backward_parts(args.tokens, 768, 1152)
    if not args.skip_gemms:
        print("plain GEMMs (M x K x N)")
        compare_gemms(args.tokens, 768, 1152, args.tuned)


if __name__ == "__main__":
    main()
