"""Clinical ModernBERT: an exact, unpadded ModernBERT for long clinical and biomedical text.

Design choices, and why:

1. **Unpad once.** The base model drops padding right after the token embedding and runs every layer on packed
   `(total_tokens, hidden)` tensors described by `cu_seqlens` / `max_seqlen` (the flash-attention convention). Only
   what the caller gets back is re-padded; task heads see ordinary `(batch, seq, hidden)` tensors. Padding therefore
   costs nothing in the MLPs, which hold most of the FLOPs, on any backend.
2. **Documents, not rows.** A "sequence" is a document. Rows that pack several documents (marked by `position_ids`
   restarting at 0, or by an explicit `cu_seqlens`) never attend across documents, and RoPE positions restart.
3. **One attention module, a table of backends.** `eager` is the readable reference; `sdpa` pads per document and
   uses `scaled_dot_product_attention` with a sliding-window mask (CPU, fp32); `flash_attention_2` runs varlen
   FlashAttention kernels: FlashAttention-4 from `flash-attn-4` (pure Python, nothing to compile) on Hopper and
   Blackwell GPUs when installed, else FlashAttention-2 from `flash-attn` when installed, else the FlashAttention-2
   kernels PyTorch >= 2.10 ships in `torch.nn.attention.varlen`. Nothing requires either package.
4. **Exact ModernBERT.** Module tree and parameter names are those of `transformers`' ModernBERT, so checkpoints
   load in both directions; `transformers.ModernBertModel` with identical weights is our numerical oracle.

The unpadding helpers follow `AnswerDotAI/ModernBERT` (`src/bert_layers/padding.py`, Apache-2.0) and
`transformers/models/modernbert` (Apache-2.0). This file is Hub remote code: it imports only torch and transformers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import operator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import logging

try:  # Hub remote code: the config sits next to this file in the same dynamic package.
    from .configuration_clinical_modernbert import ClinicalModernBertConfig
except ImportError:  # Imported from a checkout, as a top-level module.
    from configuration_clinical_modernbert import ClinicalModernBertConfig

logger = logging.get_logger(__name__)

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

# Optional fast paths: guarded imports, the model always builds and runs without them.
try:
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn
except ImportError:  # torch < 2.10
    _torch_varlen_attn = None

_flash_attn_varlen_qkvpacked = None
_flash_attn_spec = importlib.util.find_spec("flash_attn")
# `flash-attn-4` alone installs `flash_attn.cute` in a namespace package (no `__init__.py`, no FlashAttention-2).
if _flash_attn_spec is not None and _flash_attn_spec.origin not in (None, "namespace"):
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func as _flash_attn_varlen_qkvpacked
    except Exception as error:  # a broken flash_attn build must not break the model
        logger.warning(f"flash_attn is installed but failed to import ({error}); using torch kernels instead")

try:  # ships with torch's CUDA builds: the training kernels below; without it, torch code does the same
    import triton
    import triton.language as tl
except ImportError:
    triton = None

_FLASH_ATTN_4_ARGS = {
    "_flash_attn_fwd": ("cu_seqlens_q", "max_seqlen_q", "softmax_scale", "window_size_left", "return_lse"),
    "_flash_attn_bwd": ("cu_seqlens_q", "max_seqlen_q", "softmax_scale", "window_size_left", "deterministic",
                        "dq", "dk", "dv"),
}
_flash_attn_4_state: bool | None = None  # None: not tried yet
# namespace -> (forward over rotated qkv, backward to the unrotated qkv's gradient): FA4 for ops that run attention
# inside a larger op (`rope_qkv_attention`)
_FA4_KERNELS: dict[str, tuple[Any, Any]] = {}


def flash_attn_4_available() -> bool:
    """True when `flash-attn-4`'s kernels import and our torch ops over them are registered (tried once).

    `flash_attn.cute` is imported on first use only: it loads the CuTe DSL compiler, which needs the CUDA driver.
    Its kernels are wrapped in torch custom ops (`torch.ops.clinical_modernbert.fa4_varlen_fwd/_bwd`), so that
    torch.compile traces each layer around them as it does around torch's own varlen op. The wrappers call the
    package's `_flash_attn_fwd` / `_flash_attn_bwd`, as torch's FA4 bridge does; a release whose functions lack
    the arguments we pass is not used.
    """
    global _flash_attn_4_state
    if _flash_attn_4_state is None:
        _flash_attn_4_state = False
        try:
            from flash_attn.cute import interface
        except ImportError:
            return False
        except Exception as error:  # a broken install must not break the model
            logger.warning(f"flash-attn-4 is installed but failed to import ({error}); using FlashAttention-2")
            return False
        import inspect

        for name, needed in _FLASH_ATTN_4_ARGS.items():
            function = getattr(interface, name, None)
            missing = needed if function is None else set(needed) - set(inspect.signature(function).parameters)
            if missing:
                logger.warning(f"this flash-attn-4 release has no {name}({', '.join(sorted(missing))}); "
                               "using FlashAttention-2")
                return False
        _register_flash_attn_4_ops(interface)
        _flash_attn_4_state = True
    return _flash_attn_4_state


def _register_flash_attn_4_ops(interface: Any, namespace: str = "clinical_modernbert") -> None:
    """`{namespace}::fa4_varlen_fwd` (with autograd) and `fa4_varlen_bwd` over `interface`, once per process.

    `interface` is `flash_attn.cute.interface` (tests pass a reference implementation under another namespace).
    """
    if hasattr(getattr(torch.ops, namespace), "fa4_varlen_fwd"):  # registered by another copy of this file
        return

    def window(size: int) -> int | None:
        return None if size < 0 else size

    def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, window_left, window_right,
                deterministic):
        out, lse = interface._flash_attn_fwd(
            q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k, softmax_scale=scale, causal=False, window_size_left=window(window_left),
            window_size_right=window(window_right), return_lse=True,
        )[:2]
        return out, lse

    def backward(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                 window_left, window_right, deterministic, dq=None, dk=None, dv=None):
        """dq, dk, dv (into the given tensors, where given: the package writes any aligned strides)."""
        dq, dk, dv = interface._flash_attn_bwd(
            q, k, v, out, grad_out, lse, softmax_scale=scale, causal=False, window_size_left=window(window_left),
            window_size_right=window(window_right), cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, deterministic=deterministic, dq=dq, dk=dk, dv=dv,
        )[:3]
        return dq, dk, dv

    arguments = ("Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, float scale, "
                 "int window_left, int window_right, bool deterministic")
    forward_op = torch.library.custom_op(
        f"{namespace}::fa4_varlen_fwd", forward, mutates_args=(),
        schema=f"(Tensor q, Tensor k, Tensor v, {arguments}) -> (Tensor, Tensor)",
    )
    backward_op = torch.library.custom_op(
        f"{namespace}::fa4_varlen_bwd", backward, mutates_args=(),
        schema=f"(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {arguments}) "
               "-> (Tensor, Tensor, Tensor)",
    )

    @forward_op.register_fake
    def _(q, k, v, *args):
        return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)  # lse: (heads, total)

    @backward_op.register_fake
    def _(grad_out, q, k, v, *args):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens_q, cu_seqlens_k, *ctx.arguments = inputs
        ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens_q, cu_seqlens_k)

    def autograd_backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
        dq, dk, dv = backward_op(grad_out.contiguous(), q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                 *ctx.arguments)
        return dq, dk, dv, *([None] * 8)

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)

    # RoPE inside the op, for training. Its backward has FA4 write dq, dk and dv into one `(total, 3, heads,
    # head_dim)` buffer and turns dq and dk into gradients of the unrotated projection in place: that buffer is the
    # Wqkv output's gradient as it stands. RoPE outside the op made that gradient with one more pass, which stacked
    # three tensors and ran at 60% of memory bandwidth (130 against about 55 us per layer at train-1024).
    def rotated_forward(rotated, cu_seqlens, max_seqlen, scale, window_left, window_right, deterministic):
        """(output, lse) over a `(total, 3, heads, head_dim)` qkv with RoPE applied."""
        out, lse = forward(*rotated.unbind(1), cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale, window_left,
                           window_right, deterministic)
        return out.contiguous(), lse

    def rotary_forward(qkv, cos, sin, cu_seqlens, max_seqlen, scale, window_left, window_right, deterministic):
        rotated = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        rotate_qk(qkv, cos, sin, rotated)
        out, lse = rotated_forward(rotated, cu_seqlens, max_seqlen, scale, window_left, window_right, deterministic)
        return out, lse, rotated

    def rotary_backward(grad_out, rotated, out, lse, cos, sin, cu_seqlens, max_seqlen, scale, window_left,
                        window_right, deterministic, pairs=False):
        """The unrotated qkv's gradient (`pairs`: q and k heads in `pair_rows` order, as in `rotated`)."""
        grad_qkv = torch.empty_like(rotated)
        backward(grad_out, *rotated.unbind(1), out, lse, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale,
                 window_left, window_right, deterministic, *grad_qkv.unbind(1))
        rotate_qk(grad_qkv, cos, sin, grad_qkv, inverse=True, pairs=pairs)
        return grad_qkv

    _FA4_KERNELS[namespace] = (rotated_forward, rotary_backward)

    settings = ("Tensor cu_seqlens, SymInt max_seqlen, float scale, int window_left, int window_right, "
                "bool deterministic")
    rotary_forward_op = torch.library.custom_op(
        f"{namespace}::fa4_rotary_varlen_fwd", rotary_forward, mutates_args=(),
        schema=f"(Tensor qkv, Tensor cos, Tensor sin, {settings}) -> (Tensor, Tensor, Tensor)",
    )
    rotary_backward_op = torch.library.custom_op(
        f"{namespace}::fa4_rotary_varlen_bwd", rotary_backward, mutates_args=(),
        schema=f"(Tensor grad_out, Tensor rotated, Tensor out, Tensor lse, Tensor cos, Tensor sin, {settings}) "
               "-> Tensor",
    )

    @rotary_forward_op.register_fake
    def _(qkv, *args):
        total, _, heads, head_dim = qkv.shape
        return (qkv.new_empty((total, heads, head_dim)), qkv.new_empty((heads, total), dtype=torch.float32),
                torch.empty_like(qkv, memory_format=torch.contiguous_format))

    @rotary_backward_op.register_fake
    def _(grad_out, rotated, *args):
        return torch.empty_like(rotated)

    def rotary_setup_context(ctx, inputs, output):
        qkv, cos, sin, cu_seqlens, *ctx.arguments = inputs
        ctx.save_for_backward(output[2], output[0], output[1], cos, sin, cu_seqlens)

    def rotary_autograd_backward(ctx, grad_out, grad_lse, grad_rotated):
        rotated, out, lse, cos, sin, cu_seqlens = ctx.saved_tensors
        grad_qkv = rotary_backward_op(grad_out.contiguous(), rotated, out, lse, cos, sin, cu_seqlens, *ctx.arguments)
        return grad_qkv, *([None] * 8)

    rotary_forward_op.register_autograd(rotary_autograd_backward, setup_context=rotary_setup_context)


# quack-kernels (Tri Dao's CuTe DSL kernels, installed with flash-attn-4): GEMMs with fused epilogues
QUACK_GEGLU = "clinical_modernbert_geglu_erf"  # our exact-GELU GeGLU among quack's gated activations
_QUACK_NEEDS = {
    "quack.activation": ("gelu_erf", "dgelu_erf", "gate_fn_map", "dgate_fn_map"),
    "quack.gemm_interface": ("gemm", "gemm_gated", "gemm_dgated", "gemm_add", "gated_to_pytorch_fn_map"),
    "quack.gemm_config": ("GemmConfig",),
}
# quack's backward GEMM with GeGLU's gradient, pinned on Hopper: its untuned default took 309 against 145 us at
# train-1024 on an H100, and its autotuner re-tunes for every new token count (`python -m bench.quack_mlp
# --autotune`, BENCHMARKS.md). The two forward GEMMs run fastest untuned.
_QUACK_DGATED_CONFIG_SM90 = dict(tile_m=128, tile_n=128, pingpong=True, is_dynamic_persistent=False, cluster_m=2,
                                 cluster_n=1, device_capacity=9)
_quack_state: bool | None = None  # None: not tried yet
_quack_rope: Any = None  # quack.epilogue.rotary, where this quack release has it: RoPE in Wqkv's GEMM epilogue


def quack_gemms_available() -> bool:
    """True when `quack-kernels` imports with the GEMMs the layers call, and our exact-GELU GeGLU and the ops over
    them (`clinical_modernbert::quack_linear`, `geglu_mlp`) are registered (tried once; imports the CuTe DSL
    compiler)."""
    global _quack_state, _quack_rope
    if _quack_state is None:
        _quack_state = False
        if importlib.util.find_spec("quack") is None:
            return False
        try:
            import cutlass.cute as cute
            from cutlass import const_expr
            from cutlass.cutlass_dsl import dsl_user_op

            modules = {name: importlib.import_module(name) for name in _QUACK_NEEDS}
        except Exception as error:  # a broken install must not break the model
            logger.warning(f"quack-kernels is installed but failed to import ({error}); the layers use cuBLAS")
            return False
        missing = [f"{module}.{name}" for module, names in _QUACK_NEEDS.items() for name in names
                   if not hasattr(modules[module], name)]
        if missing:
            logger.warning(f"this quack-kernels release has no {', '.join(missing)}; the layers use cuBLAS")
            return False
        activation, gemm_interface = modules["quack.activation"], modules["quack.gemm_interface"]
        _register_quack_geglu(activation, gemm_interface, cute, const_expr, dsl_user_op)
        _register_quack_ops(gemm_interface, modules["quack.gemm_config"].GemmConfig(**_QUACK_DGATED_CONFIG_SM90))
        _quack_state = True
        try:
            rotary = importlib.import_module("quack.epilogue.rotary")
        except Exception:  # an older release: RoPE stays in the attention ops
            rotary = None
        if all(hasattr(rotary, name) for name in ("rope_posfreq_epi", "make_interleaved_inv_freq")):
            _register_rope_qkv_attention_op(rotary)
            _quack_rope = rotary
    return _quack_state


def _register_quack_geglu(activation: Any, gemm_interface: Any, cute: Any, const_expr: Any, dsl_user_op: Any) -> None:
    """`QUACK_GEGLU`: `gelu(x) * y` with exact GELU, and its gradient, for quack's gated-epilogue GEMMs. quack's own
    "geglu" uses the tanh approximation; these follow its `geglu`/`dgeglu` with its exact `gelu_erf`/`dgelu_erf`.
    A value `x` is one fp32 number or a pair (the epilogue's packed f32x2 math)."""
    if QUACK_GEGLU in activation.gate_fn_map:
        return

    @dsl_user_op
    def geglu_erf(x, y, *, loc=None, ip=None):
        if const_expr(not isinstance(x, tuple)):
            return activation.gelu_erf(x, loc=loc, ip=ip) * y
        return cute.arch.mul_packed_f32x2(activation.gelu_erf(x, loc=loc, ip=ip), y)

    @dsl_user_op
    def dgeglu_erf(x, y, dout, *, loc=None, ip=None):
        """(d x, d y, gelu(x) * y) from the output's gradient `dout`."""
        dgelu_dout, gelu = activation.dgelu_erf(x, dout, loc=loc, ip=ip)
        if const_expr(not isinstance(x, tuple)):
            return dgelu_dout * y, gelu * dout, gelu * y
        return (cute.arch.mul_packed_f32x2(dgelu_dout, y), cute.arch.mul_packed_f32x2(gelu, dout),
                cute.arch.mul_packed_f32x2(gelu, y))

    activation.gate_fn_map[QUACK_GEGLU] = geglu_erf
    activation.dgate_fn_map[QUACK_GEGLU] = dgeglu_erf
    gemm_interface.gated_to_pytorch_fn_map[QUACK_GEGLU] = lambda gate, up: F.gelu(gate) * up


def interleave_halves(weight: torch.Tensor) -> torch.Tensor:
    """`Wi`'s rows `[input; gate]` reordered `input_0, gate_0, input_1, ...`: the layout of quack's gated GEMMs."""
    return weight.view(2, weight.shape[0] // 2, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape)


def _register_quack_ops(gemms: Any, dgated_config_sm90: Any) -> None:
    """`clinical_modernbert::quack_linear` and `geglu_mlp` (with autograd, and their backward ops), once per process.

    `quack_linear`: `x @ w.T (+ residual)`, forward on quack's GEMM, the residual added in its epilogue (torch's
    `addmm` first copies the residual into the output: 23 us per layer at train-1024 on an H100); backward on cuBLAS.

    `geglu_mlp`: `hidden + Wo(geglu(normed @ Wi.T))` as two quack GEMMs. The first writes `Wi`'s output (interleaved:
    `interleave_halves`) for backward and GeGLU's output from its epilogue; the second adds the residual in its
    epilogue. Backward: one quack GEMM makes the
    gradient of `Wi`'s output from `Wo`'s (GeGLU's derivative in the epilogue) and recomputes GeGLU's output for
    `Wo`'s weight gradient, so the forward stores it nowhere; the three other matmuls are cuBLAS's, which is faster
    than quack's untuned kernels for the weight gradients (`python -m bench.quack_mlp`). On Hopper that backward
    GEMM runs `dgated_config_sm90`.
    """
    if hasattr(torch.ops.clinical_modernbert, "geglu_mlp"):
        return

    def linear(x, w, residual):
        if residual is None:
            return gemms.gemm(x.contiguous(), w.t(), tuned=False)
        return gemms.gemm_add(x.contiguous(), w.t(), residual.contiguous(), tuned=False)

    def linear_backward(grad_out, x, w):
        return grad_out @ w, grad_out.t() @ x

    linear_op = torch.library.custom_op("clinical_modernbert::quack_linear", linear, mutates_args=(),
                                        schema="(Tensor x, Tensor w, Tensor? residual) -> Tensor")
    linear_backward_op = torch.library.custom_op(
        "clinical_modernbert::quack_linear_backward", linear_backward, mutates_args=(),
        schema="(Tensor grad_out, Tensor x, Tensor w) -> (Tensor, Tensor)",
    )

    @linear_op.register_fake
    def _(x, w, residual):
        return x.new_empty((x.shape[0], w.shape[0]))

    @linear_backward_op.register_fake
    def _(grad_out, x, w):
        return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w)

    def linear_setup_context(ctx, inputs, output):
        x, w, residual = inputs
        ctx.has_residual = residual is not None
        ctx.save_for_backward(x, w)

    def linear_autograd_backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        grad_x, grad_w = linear_backward_op(grad_out.contiguous(), x, w)
        return grad_x, grad_w, grad_out if ctx.has_residual else None

    linear_op.register_autograd(linear_autograd_backward, setup_context=linear_setup_context)

    configs: dict[torch.device, Any] = {}

    def dgated_config(device: torch.device) -> Any:
        if device not in configs:
            configs[device] = dgated_config_sm90 if torch.cuda.get_device_capability(device)[0] == 9 else None
        return configs[device]

    def forward(hidden, normed, wi, wo):
        preact, act = gemms.gemm_gated(normed.contiguous(), wi.t(), activation=QUACK_GEGLU, tuned=False)
        return gemms.gemm_add(act, wo.t(), hidden.contiguous(), tuned=False), preact

    def backward(grad_out, normed, preact, wi, wo):
        grad_preact, act = gemms.gemm_dgated(grad_out, wo, preact, activation=QUACK_GEGLU, tuned=False,
                                             config=dgated_config(grad_out.device))[:2]
        return grad_preact @ wi, grad_preact.t() @ normed, grad_out.t() @ act

    forward_op = torch.library.custom_op(
        "clinical_modernbert::geglu_mlp", forward, mutates_args=(),
        schema="(Tensor hidden, Tensor normed, Tensor wi, Tensor wo) -> (Tensor, Tensor)",
    )
    backward_op = torch.library.custom_op(
        "clinical_modernbert::geglu_mlp_backward", backward, mutates_args=(),
        schema="(Tensor grad_out, Tensor normed, Tensor preact, Tensor wi, Tensor wo) -> (Tensor, Tensor, Tensor)",
    )

    @forward_op.register_fake
    def _(hidden, normed, wi, wo):
        return torch.empty_like(hidden, memory_format=torch.contiguous_format), normed.new_empty(
            (normed.shape[0], wi.shape[0]))

    @backward_op.register_fake
    def _(grad_out, normed, preact, wi, wo):
        return (torch.empty_like(normed, memory_format=torch.contiguous_format), torch.empty_like(wi),
                torch.empty_like(wo))

    def setup_context(ctx, inputs, output):
        _, normed, wi, wo = inputs
        ctx.save_for_backward(normed, output[1], wi, wo)

    def autograd_backward(ctx, grad_out, grad_preact):
        normed, preact, wi, wo = ctx.saved_tensors
        grad_normed, grad_wi, grad_wo = backward_op(grad_out.contiguous(), normed, preact, wi, wo)
        return grad_out, grad_normed, grad_wi, grad_wo

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)


def pair_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """`Wqkv`'s weight `(3 * hidden, ...)` with each q and k head's rows reordered `0, half, 1, half + 1, ...`, so
    that the output columns rotate_half rotates together sit side by side (quack's RoPE epilogue rotates adjacent
    columns); v's rows are unchanged. q.k is the same when q and k share the order, so attention takes it as it is."""
    qk, v = weight.split((weight.shape[0] // 3 * 2, weight.shape[0] // 3))
    qk = qk.reshape(-1, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(qk.shape)
    return torch.cat((qk, v))


def _register_rope_qkv_attention_op(rotary: Any, namespace: str = "clinical_modernbert") -> None:
    """`{namespace}::rope_qkv_attention` (with autograd) and its backward op, once per process.

    `Wqkv`, RoPE and attention (a local layer's kernels, or FA4) as one op, for training with quack's GEMMs: quack's
    GEMM rotates q and k in its epilogue (`rotary.rope_posfreq_epi`: cos and sin computed from each token's position
    and a per-column frequency, 0 for v), so no pass over qkv rotates them (65 us per layer at train-1024 on an
    H100: the GEMM took 131.7 against 196.8 us for the GEMM and the rotation, `python -m bench.quack_rope`; the step
    ran at 486,137 against 471,566 tok/s, `bench.bench`'s ours-varlen-graphs-rope-pass, BENCHMARKS.md). The
    weight comes with its q and k rows in `pair_rows` order, and the rotated qkv keeps that order. In backward the
    attention kernels turn dq and dk into gradients of the unrotated projection (the local kernels as they store
    them, `rotate_qk(..., pairs=True)` after FA4), and cuBLAS makes the input and weight gradients from them. One
    op, so that the rotation stays out of the gradient that leaves it: the attention ops alone would have to pass
    the rotated gradient back, and the GEMM's backward would rotate it in a pass of its own.

    `tables` is the local layers' window table (`local_attention_bounds`) when `local`, else `cu_seqlens`. `rotary`
    is `quack.epilogue.rotary`; FA4 is the one behind `{namespace}::fa4_varlen_fwd` (tests pass torch stand-ins for
    both under another namespace).
    """
    if hasattr(getattr(torch.ops, namespace), "rope_qkv_attention"):
        return

    def forward(normed, w, positions, frequencies, cos, sin, tables, max_seqlen, scale, window_left, window_right,
                deterministic, local):
        qkv = rotary.rope_posfreq_epi(normed.contiguous(), w.t(), tuned=False, pos=positions, freq=frequencies)["D"]
        rotated = qkv.view(qkv.shape[0], 3, -1, cos.shape[-1])
        if local:
            out, lse = _local_attention_rotated(rotated, tables, window_left, scale)
        else:
            out, lse = _FA4_KERNELS[namespace][0](rotated, tables, max_seqlen, scale, window_left, window_right,
                                                  deterministic)
        return out, lse, rotated

    def backward(grad_out, normed, w, rotated, out, lse, cos, sin, tables, max_seqlen, scale, window_left,
                 window_right, deterministic, local):
        if local:
            grad = _local_attention_backward(grad_out, rotated, out, lse, cos, sin, tables, window_left, scale,
                                             pairs=True)
        else:
            grad = _FA4_KERNELS[namespace][1](grad_out, rotated, out, lse, cos, sin, tables, max_seqlen, scale,
                                              window_left, window_right, deterministic, pairs=True)
        grad = grad.view(grad.shape[0], -1)
        return grad @ w, grad.t() @ normed

    settings = ("SymInt max_seqlen, float scale, int window_left, int window_right, bool deterministic, "
                "bool local")
    forward_op = torch.library.custom_op(
        f"{namespace}::rope_qkv_attention", forward, mutates_args=(),
        schema="(Tensor normed, Tensor w, Tensor positions, Tensor frequencies, Tensor cos, Tensor sin, "
               f"Tensor tables, {settings}) -> (Tensor, Tensor, Tensor)",
    )
    backward_op = torch.library.custom_op(
        f"{namespace}::rope_qkv_attention_backward", backward, mutates_args=(),
        schema="(Tensor grad_out, Tensor normed, Tensor w, Tensor rotated, Tensor out, Tensor lse, Tensor cos, "
               f"Tensor sin, Tensor tables, {settings}) -> (Tensor, Tensor)",
    )

    @forward_op.register_fake
    def _(normed, w, positions, frequencies, cos, *args):
        total, head_dim = normed.shape[0], cos.shape[-1]
        heads = w.shape[0] // 3 // head_dim
        return (normed.new_empty((total, heads, head_dim)), normed.new_empty((heads, total), dtype=torch.float32),
                normed.new_empty((total, 3, heads, head_dim)))

    @backward_op.register_fake
    def _(grad_out, normed, w, *args):
        return torch.empty_like(normed, memory_format=torch.contiguous_format), torch.empty_like(w)

    def setup_context(ctx, inputs, output):
        normed, w, _, _, cos, sin, tables, *ctx.arguments = inputs
        out, lse, rotated = output
        ctx.save_for_backward(normed, w, rotated, out, lse, cos, sin, tables)

    def autograd_backward(ctx, grad_out, grad_lse, grad_rotated):
        grad_normed, grad_w = backward_op(grad_out.contiguous(), *ctx.saved_tensors, *ctx.arguments)
        return grad_normed, grad_w, *([None] * 11)

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)


def resolve_linear_kernel(requested: str, device: torch.device, cuda_graphs: bool) -> str:
    """"quack" or "torch" for `config.linear_kernel` on this CUDA device (the caller checks the model's conditions).

    `"auto"` takes quack's GEMMs only where the layers replay CUDA graphs, where they gained 6% at train-1024 on an
    H100 (451,068 -> 478,026 tok/s in one run, BENCHMARKS.md). Without graphs each quack call does its argument
    handling and kernel lookup in Python, and the plain step is already short of CPU time on some hosts."""
    if requested == "torch" or (requested == "auto" and not cuda_graphs):
        return "torch"
    major = torch.cuda.get_device_capability(device)[0]
    if major in (9, 10) and quack_gemms_available():
        return "quack"
    if requested == "quack":
        raise ValueError(f"linear_kernel='quack' needs the quack-kernels package (`pip install quack-kernels`, which "
                         f"flash-attn-4 installs) and a GPU of compute capability 9.x or 10.x (got {major}.x); use "
                         "linear_kernel='auto'")
    return "torch"


_logged_once: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged_once:
        _logged_once.add(message)
        logger.info(message)


_compiled_functions: dict = {}
_compile_failed: set = set()


def compile_supported(device: torch.device) -> bool:
    """torch.compile fuses our blocks with Triton on CUDA; never compile where no Triton is installed."""
    return device.type == "cuda" and hasattr(torch, "compile") and importlib.util.find_spec("triton") is not None


def _keep_attention_outputs(graph: torch.fx.GraphModule, joint_inputs: Any) -> torch.fx.GraphModule:
    """A joint-graph pass: never recompute the varlen attention op in backward; save its outputs instead.

    Under `activation_memory_budget < 1` the compiler picks what backward recomputes with a knapsack over runtime
    estimates from FLOP counts, in which attention looks cheap (torch 2.11 has no count for this op at all), so the
    attention kernel ran twice per layer: forward, and again in backward. Marking the op MUST_SAVE bans it from
    recomputation and keeps its outputs (the attention output and the log-sum-exp: one hidden-size row per token);
    the budget is then met by recomputing the norms and GeGLU, which are cheap. (torch's AOTAutograd cache key does
    not cover this pass: graphs cached on disk by an earlier version of this file are reused without it until the
    compile cache is cleared.)
    """
    from torch.utils.checkpoint import CheckpointPolicy

    ops = {torch.ops.torch_attn._varlen_attn.default, torch.ops.clinical_modernbert.local_attention.default}
    if _flash_attn_4_state:
        ops |= {torch.ops.clinical_modernbert.fa4_varlen_fwd.default,
                torch.ops.clinical_modernbert.fa4_rotary_varlen_fwd.default}
    if _quack_rope is not None:
        ops.add(torch.ops.clinical_modernbert.rope_qkv_attention.default)
    for node in graph.graph.nodes:
        if node.op == "call_function" and (node.target in ops or _is_local_attention_kernel(node)):
            # banned from recomputation: its outputs are saved (a kernel launch returns them through getitem nodes)
            for saved in (node, *(user for user in node.users if user.target is operator.getitem)):
                saved.meta["recompute"] = CheckpointPolicy.MUST_SAVE
    return graph


def _is_local_attention_kernel(node: torch.fx.Node) -> bool:
    """A launch of `local_attention`'s forward kernel in a traced graph: torch.compile traces into the op (a
    `triton_op`), so the graph holds the kernel launch, not the op."""
    if triton is None or node.target is not getattr(torch.ops.higher_order, "triton_kernel_wrapper_functional", None):
        return False
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    return kernel_side_table.get_kernel(node.kwargs["kernel_idx"]) is _local_attention_fwd_kernel


def _compile_settings(memory_budget: float) -> list[tuple[object, dict]]:
    """The torch config values our compiled graphs are made under, as (config module, values) pairs."""
    import torch._dynamo

    # Under DDP, dynamo's DDPOptimizer would split every graph compiled here at DDP's bucket boundaries. Its first
    # bucket holds 1 MB, so each layer would split before the MLP's output projection: fusions are lost, the
    # activation planner sees half-layers, and each layer costs two graph calls. A layer is already the unit at which
    # its gradients become ready for DDP's all-reduce, so splitting it gains nothing.
    settings: list[tuple[object, dict]] = [(torch._dynamo.config, {"optimize_ddp": False})]
    if memory_budget < 1.0:
        import torch._functorch.config

        budget = {"activation_memory_budget": memory_budget}
        if _torch_varlen_attn is not None and hasattr(torch._functorch.config, "joint_custom_pass"):
            budget["joint_custom_pass"] = _keep_attention_outputs
        settings.append((torch._functorch.config, budget))
    return settings


def maybe_compiled(fn, enabled: bool, memory_budget: float = 1.0, cuda_graphs: bool = False):
    """`fn` compiled once for all layers (parameters are graph inputs), or `fn` itself.

    `memory_budget` is torch's `activation_memory_budget` for the graphs compiled for it: the share of activations
    the backward may keep (1.0: the default min-cut choice; lower recomputes more to save memory).
    `cuda_graphs`: compile with `mode="reduce-overhead"`, which replays a recorded CUDA graph per input shape
    (the caller keeps shapes few: see `pad_to_static_shapes`).
    A compile error is logged once and the plain function is used from then on: compiling is an optimisation and
    must never break a model that runs without it.
    """
    if not enabled or fn in _compile_failed:
        return fn
    key = (fn, memory_budget, cuda_graphs)
    if key in _compiled_functions:
        return _compiled_functions[key]
    # One function serves every layer, whose variants (first layer, global/local window, dtypes, grad mode) each
    # take a graph: allow more than dynamo's default of 8 before it gives up and runs eagerly.
    import torch._dynamo

    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), 64))
    compiled = torch.compile(fn, dynamic=True, mode="reduce-overhead" if cuda_graphs else None)
    patches = [module.patch(**values) for module, values in _compile_settings(memory_budget)]

    def run(*args, **kwargs):
        try:
            with contextlib.ExitStack() as stack:
                for patch in patches:
                    stack.enter_context(patch)
                return compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
            logger.warning(f"torch.compile of {fn.__name__} failed ({type(error).__name__}: {error}); running eagerly")
            _compile_failed.add(fn)
            return fn(*args, **kwargs)

    _compiled_functions[key] = run
    return run


# --------------------------------------------------------------------------------------------------------------------
# Unpadding
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Where the real tokens of a batch live, and how they split into documents.

    `indices` maps packed token t to its position in the flattened `(batch * seq_len)` input (None when the input
    was already packed). `cu_seqlens` are the document boundaries in packed coordinates.
    """

    indices: torch.Tensor | None  # (total_tokens,) int64
    cu_seqlens: torch.Tensor  # (num_docs + 1,) int32
    max_seqlen: int
    position_ids: torch.Tensor  # (total_tokens,) int64
    batch_size: int
    seq_len: int

    @property
    def total_tokens(self) -> int:
        return self.position_ids.shape[0]

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """`(batch, seq_len, ...)` -> `(total_tokens, ...)`."""
        flat = padded.reshape(self.batch_size * self.seq_len, *padded.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """`(total_tokens, ...)` -> `(batch, seq_len, ...)`, zeros at padding."""
        if self.indices is None:
            return packed.reshape(self.batch_size, self.seq_len, *packed.shape[1:])
        flat = packed.new_zeros(self.batch_size * self.seq_len, *packed.shape[1:])
        flat = flat.index_copy(0, self.indices, packed)
        return flat.view(self.batch_size, self.seq_len, *packed.shape[1:])


# The static shapes a packed batch is padded to when `config.cuda_graphs` is on (see `pad_to_static_shapes`).
# Each new combination of shapes records every layer's graphs again (about a second), so the buckets are coarse:
# in `python -m train` with buckets of 64 documents and 256 rows, recording made steps 3x slower on average.
GRAPH_TOKEN_MULTIPLE = 1024
GRAPH_MIN_DOCUMENTS = 64  # documents: the next power of two, at least this
GRAPH_ROW_MULTIPLE = 1024


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_to_static_shapes(
    token_ids: torch.Tensor | None,
    embeds: torch.Tensor | None,
    position_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    rows: torch.Tensor | None,
    pad_token_id: int,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    """Pad a packed batch to a few static shapes, so that CUDA graphs recorded for one batch replay for the next.

    - tokens: to a multiple of `GRAPH_TOKEN_MULTIPLE`, as one extra document of `pad_token_id` (zero embeddings
      for `embeds`) with positions 0, 1, ...: documents never attend to each other, so real tokens do not see it;
    - documents: `cu_seqlens` to a power of two (at least `GRAPH_MIN_DOCUMENTS`) documents, empty ones at the end;
    - `max_seqlen`: to a multiple of `GRAPH_TOKEN_MULTIPLE` (an upper bound is all attention kernels need);
    - `rows` (ascending output rows): to a multiple of `GRAPH_ROW_MULTIPLE`, repeating the last row (or the last
      token when there are none), which keeps them ascending.

    Everything runs on the device from shapes the host knows: no sync. The caller keeps the first
    `position_ids.shape[0]` tokens (or `rows.shape[0]` rows) of the output.
    """
    total = position_ids.shape[0]
    padded_total = _round_up(max(total, 1), GRAPH_TOKEN_MULTIPLE)
    extra = padded_total - total
    documents = cu_seqlens.shape[0] - 1 + (1 if extra else 0)
    boundaries = [cu_seqlens]
    if extra:
        boundaries.append(cu_seqlens.new_full((1,), padded_total))
        position_ids = torch.cat([position_ids, torch.arange(extra, device=position_ids.device,
                                                             dtype=position_ids.dtype)])
        if token_ids is not None:
            token_ids = torch.cat([token_ids, token_ids.new_full((extra,), pad_token_id)])
        if embeds is not None:
            embeds = torch.cat([embeds, embeds.new_zeros((extra, *embeds.shape[1:]))])
    empty = max(GRAPH_MIN_DOCUMENTS, 1 << (documents - 1).bit_length()) - documents
    boundaries.append(cu_seqlens.new_full((empty,), padded_total))
    cu_seqlens = torch.cat(boundaries)
    max_seqlen = _round_up(max(max_seqlen, extra, 1), GRAPH_TOKEN_MULTIPLE)
    if rows is not None:
        count = rows.shape[0]
        filler = rows[-1:] if count else rows.new_full((1,), padded_total - 1)
        rows = torch.cat([rows, filler.expand(_round_up(max(count, 1), GRAPH_ROW_MULTIPLE) - count)])
    return token_ids, embeds, position_ids, cu_seqlens, max_seqlen, rows


def _positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), seqlens, output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


def unpad_input(
    batch_size: int,
    seq_len: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> PackedBatch:
    """Describe the real tokens of a batch as packed documents.

    Three input forms:
    - `cu_seqlens` given: the tokens are already packed (`batch_size * seq_len == cu_seqlens[-1]`).
    - `position_ids` given: a new document starts at each row's first real token and wherever the position is 0.
    - neither: one document per row; positions count real tokens, so left padding works too.
    """
    if cu_seqlens is not None:
        if attention_mask is not None:
            raise ValueError("pass either attention_mask or cu_seqlens, not both (cu_seqlens means no padding)")
        cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
        total = batch_size * seq_len
        if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            raise ValueError(f"cu_seqlens must be 1-D with >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if position_ids is None:
            positions = _positions_from_cu_seqlens(cu_seqlens, total)
        else:
            positions = position_ids.reshape(-1).to(device)
        return PackedBatch(None, cu_seqlens, int(max_seqlen), positions, batch_size, seq_len)

    if attention_mask is None:
        mask = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
    else:
        mask = attention_mask.to(device).bool()
    real_per_row = mask.cumsum(1)
    if position_ids is None:
        position_ids = real_per_row - 1
        starts = mask & (real_per_row == 1)
    else:
        position_ids = position_ids.to(device).expand(batch_size, seq_len)
        starts = mask & ((real_per_row == 1) | (position_ids == 0))
    indices = mask.flatten().nonzero().squeeze(1)  # (total_tokens,)
    total = indices.shape[0]
    doc_starts = starts.flatten().index_select(0, indices).nonzero().squeeze(1)  # (num_docs,)
    cu_seqlens = torch.cat([doc_starts, doc_starts.new_tensor([total])]).to(torch.int32)
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if total else 0
    positions = position_ids.flatten().index_select(0, indices)
    return PackedBatch(indices, cu_seqlens, int(max_seqlen), positions, batch_size, seq_len)


@dataclass
class DocumentPadding:
    """Padding for the padded backends (sdpa, eager), built once per forward and shared by all layers.

    Consecutive documents are grouped into rows of at most `row_len = max_seqlen` tokens, and a block-diagonal mask
    keeps each document to itself. Padding every document to the longest one would cost `num_docs * max_seqlen**2`
    (ruinous for packed batches of short documents); grouping costs about `total_tokens * max_seqlen`.
    """

    dest: torch.Tensor  # (total_tokens,) int64: slot of each packed token in the (num_rows * row_len) grid
    doc_grid: torch.Tensor  # (num_rows, row_len) int64: document of each slot, -1 for padding
    num_rows: int
    row_len: int

    @classmethod
    def build(cls, cu_seqlens: torch.Tensor, max_seqlen: int, total: int) -> DocumentPadding:
        device = cu_seqlens.device
        seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()  # grouping is host-side work; padded backends only
        row_of_doc, row_start_of_doc, row, fill = [], [], 0, 0
        for length in seqlens:
            if fill and fill + length > max_seqlen:
                row, fill = row + 1, 0
            row_of_doc.append(row)
            row_start_of_doc.append(fill)
            fill += length
        num_docs = len(seqlens)
        counts = torch.tensor(seqlens, device=device)
        doc_ids = torch.repeat_interleave(torch.arange(num_docs, device=device), counts, output_size=total)
        offsets = torch.arange(total, device=device) - cu_seqlens[:-1].long()[doc_ids]  # position in its document
        slots = torch.tensor(row_of_doc, device=device) * max_seqlen + torch.tensor(row_start_of_doc, device=device)
        dest = slots[doc_ids] + offsets
        num_rows = (row + 1) if num_docs else 0
        doc_grid = torch.full((num_rows * max_seqlen,), -1, dtype=torch.long, device=device)
        doc_grid[dest] = doc_ids
        return cls(dest, doc_grid.view(num_rows, max_seqlen), num_rows, max_seqlen)

    def attention_mask(self, local_window: int | None) -> torch.Tensor:
        """Boolean `(num_rows, 1, row_len, row_len)`: same document, real keys, within the window on local layers.

        Padding queries see the padding keys of their row, so no softmax row is empty (their output is dropped).
        """
        mask = (self.doc_grid[:, :, None] == self.doc_grid[:, None, :])[:, None]
        if local_window is not None:
            # Documents are contiguous within a row, so slot distance is token distance within a document.
            pos = torch.arange(self.row_len, device=self.doc_grid.device)
            mask = mask & ((pos[:, None] - pos[None, :]).abs() <= local_window)
        return mask

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """`(total_tokens, ...)` -> `(num_rows, row_len, ...)`."""
        grid = packed.new_zeros(self.num_rows * self.row_len, *packed.shape[1:])
        return grid.index_copy(0, self.dest, packed).view(self.num_rows, self.row_len, *packed.shape[1:])

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.reshape(self.num_rows * self.row_len, *padded.shape[2:]).index_select(0, self.dest)


# --------------------------------------------------------------------------------------------------------------------
# Attention backends: (qkv, context, layer) -> (total_tokens, heads, head_dim). `eager` is the reference.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class AttentionContext:
    """Everything a layer needs to attend over the packed batch; built once per forward."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    rope: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer type -> (cos, sin), each (total_tokens, 1, head_dim)
    compile: bool = False  # run the blocks around attention through torch.compile
    cuda_graphs: bool = False  # ... and replay them as CUDA graphs (static shapes: `pad_to_static_shapes`)
    fused_varlen: bool = False  # attention is a torch op (varlen or ours over FA4): compiled with the whole layer
    varlen_kernel: str = "torch"  # behind `flash_attention_2`: "flash-attn-4", "flash-attn" or "torch"
    linear_kernel: str = "torch"  # the layers' GEMMs on the fused varlen path in training: "quack" or "torch"
    # set: local layers of the fused varlen path run `local_attention`'s Triton kernels over these windows
    local_bounds: torch.Tensor | None = None
    # set: RoPE in Wqkv's GEMM (`rope_qkv_attention`); layer type -> (float positions, quack's frequency table)
    rope_gemm: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    padding: DocumentPadding | None = None  # built lazily by the padded backends
    masks: dict | None = None

    def document_padding(self) -> DocumentPadding:
        if self.padding is None:
            total = next(iter(self.rope.values()))[0].shape[0]
            self.padding = DocumentPadding.build(self.cu_seqlens, self.max_seqlen, total)
            self.masks = {}
        return self.padding

    def padded_mask(self, local_window: int | None) -> torch.Tensor:
        padding = self.document_padding()
        if local_window not in self.masks:
            self.masks[local_window] = padding.attention_mask(local_window)
        return self.masks[local_window]


def eager_attention(qkv: torch.Tensor, ctx: AttentionContext, module: ClinicalModernBertAttention) -> torch.Tensor:
    padding = ctx.document_padding()
    q, k, v = padding.pad(qkv).permute(2, 0, 3, 1, 4).unbind(0)  # each (rows, heads, row_len, head_dim)
    scores = torch.matmul(q, k.transpose(-1, -2)) * module.scale
    scores = scores.masked_fill(~ctx.padded_mask(module.local_window), torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=module.dropout_p if module.training else 0.0, training=module.training)
    out = torch.matmul(probs, v).transpose(1, 2)  # (rows, row_len, heads, head_dim)
    return padding.unpad(out)


def sdpa_attention(qkv: torch.Tensor, ctx: AttentionContext, module: ClinicalModernBertAttention) -> torch.Tensor:
    padding = ctx.document_padding()
    q, k, v = padding.pad(qkv).permute(2, 0, 3, 1, 4).unbind(0)  # each (rows, heads, row_len, head_dim)
    out = F.scaled_dot_product_attention(
        q, k, v,
        attn_mask=ctx.padded_mask(module.local_window),
        dropout_p=module.dropout_p if module.training else 0.0,
        scale=module.scale,
    )
    return padding.unpad(out.transpose(1, 2))


def _varlen_attn(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                 max_seqlen: int, module: ClinicalModernBertAttention,
                 cu_seqlens_q: torch.Tensor | None = None) -> torch.Tensor:
    """Varlen self-attention by torch op: FlashAttention-4 (`flash-attn-4`) or torch's FlashAttention-2.

    `cu_seqlens_q` (global layers only): q holds a subset of each document's tokens, delimited by it; k and v hold
    all of them. `max_seqlen` bounds both.
    """
    window = module.window_size
    if cu_seqlens_q is None:
        cu_seqlens_q = cu_seqlens
    elif module.local_window is not None:
        raise ValueError("a subset of queries needs a global attention layer: local windows count query positions")
    if kernel == "flash-attn-4":
        return torch.ops.clinical_modernbert.fa4_varlen_fwd(
            q, k, v, cu_seqlens_q, cu_seqlens, max_seqlen, max_seqlen, module.scale, window[0], window[1],
            module.deterministic,
        )[0]
    return _torch_varlen_attn(
        q, k, v, cu_seqlens_q, cu_seqlens, max_seqlen, max_seqlen, scale=module.scale, window_size=window
    )


def varlen_attention(qkv: torch.Tensor, ctx: AttentionContext, module: ClinicalModernBertAttention) -> torch.Tensor:
    if ctx.varlen_kernel == "flash-attn":
        return _flash_attn_varlen_qkvpacked(
            qkv, ctx.cu_seqlens, ctx.max_seqlen,
            dropout_p=module.dropout_p if module.training else 0.0,
            softmax_scale=module.scale,
            causal=False,
            window_size=module.window_size,
            deterministic=module.deterministic,
        )
    q, k, v = qkv.unbind(1)  # each (total_tokens, heads, head_dim)
    return _varlen_attn(ctx.varlen_kernel, q, k, v, ctx.cu_seqlens, ctx.max_seqlen, module)


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention, "flash_attention_2": varlen_attention}


def varlen_available() -> bool:
    """True when an unpadded FlashAttention-2 kernel (flash_attn or torch's) can run on a CUDA device."""
    return torch.cuda.is_available() and (_flash_attn_varlen_qkvpacked is not None or _torch_varlen_attn is not None)


def resolve_attention_backend(requested: str, qkv: torch.Tensor, training_dropout: bool) -> str:
    """The backend that runs for this call: `requested`, with `"auto"` made concrete."""
    kernel_ok = qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16) and varlen_available()
    if requested == "auto":
        # torch's varlen kernel has no dropout; attention dropout is 0 in ModernBERT, so this is rarely hit.
        use_varlen = kernel_ok and not (training_dropout and _flash_attn_varlen_qkvpacked is None)
        requested = "flash_attention_2" if use_varlen else "sdpa"
    elif requested == "flash_attention_2":
        if not kernel_ok:
            raise ValueError(
                "attention_backend='flash_attention_2' needs a CUDA device, fp16/bf16 activations and either the "
                f"flash_attn package or torch >= 2.10 (got device={qkv.device}, dtype={qkv.dtype}, "
                f"torch={torch.__version__}); use attention_backend='auto' or 'sdpa'"
            )
        if training_dropout and _flash_attn_varlen_qkvpacked is None:
            raise ValueError("torch's varlen attention has no dropout: set attention_dropout=0 or install flash_attn")
    _log_once(f"Clinical ModernBERT attention backend: {requested}")
    return requested


VARLEN_KERNEL_NAMES = {
    "flash-attn-4": "FlashAttention-4 (flash-attn-4)",
    "flash-attn": "FlashAttention-2 (flash-attn)",
    "torch": "FlashAttention-2 (torch.nn.attention.varlen)",
}


def resolve_varlen_kernel(requested: str, device: torch.device, head_dim: int, training_dropout: bool) -> str:
    """The kernels behind `flash_attention_2` on this CUDA device: `requested` (`config.varlen_kernel`), concrete.

    `"auto"` takes FlashAttention-4 on compute capability 9.x/10.x when `flash-attn-4` is installed, else
    `flash-attn`'s FlashAttention-2 when installed, else torch's. Training with attention dropout needs `flash-attn`
    (neither torch's kernels nor FA4 have dropout).
    """
    major = torch.cuda.get_device_capability(device)[0]
    fa4_fits = major in (9, 10) and head_dim % 8 == 0 and head_dim <= 256 and not training_dropout
    if requested == "flash-attn-4" or (requested == "auto" and fa4_fits):
        if fa4_fits and flash_attn_4_available():
            return "flash-attn-4"
        if requested == "flash-attn-4":
            raise ValueError(
                "varlen_kernel='flash-attn-4' needs the flash-attn-4 package (`pip install flash-attn-4`), a GPU of "
                f"compute capability 9.x or 10.x, a head_dim that is a multiple of 8 up to 256 and no attention "
                f"dropout in training (got capability {major}.x, head_dim={head_dim}, "
                f"training_dropout={training_dropout}); use varlen_kernel='auto'"
            )
    if requested in ("auto", "flash-attn") and _flash_attn_varlen_qkvpacked is not None:
        return "flash-attn"
    if requested == "flash-attn":
        raise ValueError("varlen_kernel='flash-attn' needs the flash-attn package; use varlen_kernel='auto'")
    if _torch_varlen_attn is None:
        raise ValueError(f"varlen_kernel={requested!r}: torch {torch.__version__} has no torch.nn.attention.varlen "
                         "(torch >= 2.10); install flash-attn or use attention_backend='sdpa'")
    return "torch"


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels for GPUs (torch code computes the same everywhere else)
# --------------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _rotary_kernel(src_ptr, dst_ptr, cos_ptr, sin_ptr, total, src_stride, dst_stride, trig_stride,
                       HEADS: tl.constexpr, QK_P2: tl.constexpr, V_P2: tl.constexpr, HALF: tl.constexpr,
                       INVERSE: tl.constexpr, COPY_V: tl.constexpr, PAIRS: tl.constexpr, BLOCK: tl.constexpr):
        """BLOCK tokens of `(total, 3, HEADS, 2 * HALF)` rows: every q and k head rotated (INVERSE: by the
        transpose) with the token's cos/sin loaded once, and v copied (COPY_V). PAIRS: q and k heads hold
        rotate_half's pairs side by side (`pair_rows`). `dst` may be `src`: each element is read before it is
        written (by the same thread; PAIRS: a barrier)."""
        tokens = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = tokens < total
        rows = tokens.to(tl.int64)
        rows3 = rows[:, None, None]
        head = tl.arange(0, QK_P2)[None, :, None]  # q heads, then k heads (padded to a power of two)
        half = tl.arange(0, HALF)[None, None, :]
        if PAIRS:  # whole heads, loaded contiguously, then split into the pairs' first and second elements
            column = tl.arange(0, 2 * HALF)[None, None, :]
            mask = valid[:, None, None] & (head < 2 * HEADS) & (column < 2 * HALF)
            offset = head * (2 * HALF) + column
            pairs = tl.load(src_ptr + rows3 * src_stride + offset, mask=mask).to(tl.float32)
            a, b = tl.split(tl.reshape(pairs, (BLOCK, QK_P2, HALF, 2)))
        else:
            mask = valid[:, None, None] & (head < 2 * HEADS) & (half < HALF)
            offset = head * (2 * HALF) + half
            src = src_ptr + rows3 * src_stride + offset
            a = tl.load(src, mask=mask).to(tl.float32)
            b = tl.load(src + HALF, mask=mask).to(tl.float32)
        trig = rows3 * trig_stride + half
        trig_mask = valid[:, None, None] & (half < HALF)
        cos1 = tl.load(cos_ptr + trig, mask=trig_mask).to(tl.float32)
        cos2 = tl.load(cos_ptr + trig + HALF, mask=trig_mask).to(tl.float32)
        sin1 = tl.load(sin_ptr + trig, mask=trig_mask).to(tl.float32)
        sin2 = tl.load(sin_ptr + trig + HALF, mask=trig_mask).to(tl.float32)
        if INVERSE:
            y1 = a * cos1 + b * sin2
            y2 = b * cos2 - a * sin1
        else:
            y1 = a * cos1 - b * sin1
            y2 = b * cos2 + a * sin2
        dst = dst_ptr + rows3 * dst_stride + offset
        if PAIRS:
            tl.debug_barrier()  # in place: every element read before any is written (the split moves them)
            tl.store(dst, tl.reshape(tl.join(y1, y2), (BLOCK, QK_P2, 2 * HALF)).to(dst_ptr.dtype.element_ty),
                     mask=mask)
        else:
            tl.store(dst, y1.to(dst_ptr.dtype.element_ty), mask=mask)
            tl.store(dst + HALF, y2.to(dst_ptr.dtype.element_ty), mask=mask)
        if COPY_V:
            column = tl.arange(0, V_P2)[None, :]
            v_mask = valid[:, None] & (column < HEADS * 2 * HALF)
            v_offset = 2 * HEADS * 2 * HALF + column
            v = tl.load(src_ptr + rows[:, None] * src_stride + v_offset, mask=v_mask)
            tl.store(dst_ptr + rows[:, None] * dst_stride + v_offset, v, mask=v_mask)

    @triton.jit
    def _cross_entropy_kernel(logits_ptr, labels_ptr, loss_ptr, rows, columns, row_stride, BLOCK: tl.constexpr):
        """Per row: the log-sum-exp (online), the loss, then `softmax - onehot` written over the logits."""
        for row in range(tl.program_id(0), rows, tl.num_programs(0)):
            row_ptr = logits_ptr + tl.cast(row, tl.int64) * row_stride
            running_max = tl.full([BLOCK], -1e30, tl.float32)
            running_sum = tl.zeros([BLOCK], tl.float32)
            for start in range(0, columns, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(row_ptr + cols, mask=cols < columns, other=float("-inf")).to(tl.float32)
                new_max = tl.maximum(running_max, x)
                running_sum = running_sum * tl.exp(running_max - new_max) + tl.exp(x - new_max)
                running_max = new_max
            top = tl.max(running_max, 0)
            lse = top + tl.log(tl.sum(running_sum * tl.exp(running_max - top), 0))
            label = tl.load(labels_ptr + row)
            in_range = (label >= 0) & (label < columns)  # anything else: a NaN loss, never a stray read
            picked = tl.load(row_ptr + label, mask=in_range, other=float("nan")).to(tl.float32)
            tl.store(loss_ptr + row, lse - picked)
            for start in range(0, columns, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < columns
                x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                grad = tl.exp(x - lse) - (cols == label).to(tl.float32)
                tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _geglu_kernel(x_ptr, grad_ptr, out_ptr, rows, width, x_stride, grad_stride, out_stride,
                      BACKWARD: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
        """A block of `(rows, 2 * width)` rows `[input | gate]`: `gelu(input) * gate` (exact GELU, fp32), or
        (BACKWARD) the gradients of both halves from the output's gradient, side by side like `x`."""
        row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)[:, None]
        col = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)[None, :]
        mask = (row < rows) & (col < width)
        row = row.to(tl.int64)
        x = x_ptr + row * x_stride + col
        a = tl.load(x, mask=mask).to(tl.float32)
        b = tl.load(x + width, mask=mask).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.erf(a * 0.7071067811865476))
        out = out_ptr + row * out_stride + col
        if BACKWARD:
            grad = tl.load(grad_ptr + row * grad_stride + col, mask=mask).to(tl.float32)
            pdf = tl.exp(-0.5 * a * a) * 0.3989422804014327
            tl.store(out, (grad * b * (cdf + a * pdf)).to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(out + width, (grad * a * cdf).to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out, (a * cdf * b).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _block_rows(start, total, BLOCK: tl.constexpr):
        """BLOCK tokens from `start`: which are real, and their rows (clamped into the batch).

        (The kernels load `bounds` themselves: torch 2.11's analysis of which tensors a kernel writes counted a
        pointer that a nested function only loaded from as written, and a written graph input turns CUDA graphs off.)
        """
        tokens = start + tl.arange(0, BLOCK)
        return tokens < total, tl.minimum(tokens, total - 1)

    @triton.jit
    def _load_head(ptr, rows, valid, row_stride, column, DIM: tl.constexpr):
        """`(len(rows), DIM)`: one head's elements (from `column`) of each row."""
        return tl.load(ptr + rows.to(tl.int64)[:, None] * row_stride + column + tl.arange(0, DIM)[None, :],
                       mask=valid[:, None], other=0.0)

    @triton.jit
    def _store_head_unrotated(ptr, cos_ptr, sin_ptr, rows, valid, row_stride, trig_stride, column, grad,
                              BLOCK: tl.constexpr, HALF: tl.constexpr, PAIRS: tl.constexpr):
        """`grad`, a gradient of rotated q or k `(BLOCK, 2 * HALF)` (fp32), turned into the gradient of the unrotated
        one (RoPE's transpose) and stored. PAIRS: the head holds rotate_half's pairs side by side (`pair_rows`), in
        `grad` and in what is stored."""
        if PAIRS:
            first, second = tl.split(tl.reshape(grad, (BLOCK, HALF, 2)))
        else:
            first, second = tl.split(tl.permute(tl.reshape(grad, (BLOCK, 2, HALF)), (0, 2, 1)))
        half = tl.arange(0, HALF)[None, :]
        rows64 = rows.to(tl.int64)[:, None]
        trig = rows64 * trig_stride + half
        cos1 = tl.load(cos_ptr + trig).to(tl.float32)
        cos2 = tl.load(cos_ptr + trig + HALF).to(tl.float32)
        sin1 = tl.load(sin_ptr + trig).to(tl.float32)
        sin2 = tl.load(sin_ptr + trig + HALF).to(tl.float32)
        first, second = first * cos1 + second * sin2, second * cos2 - first * sin1
        if PAIRS:
            out = ptr + rows64 * row_stride + column + tl.arange(0, 2 * HALF)[None, :]
            tl.store(out, tl.reshape(tl.join(first, second), (BLOCK, 2 * HALF)).to(ptr.dtype.element_ty),
                     mask=valid[:, None])
        else:
            out = ptr + rows64 * row_stride + column + half
            tl.store(out, first.to(ptr.dtype.element_ty), mask=valid[:, None])
            tl.store(out + HALF, second.to(ptr.dtype.element_ty), mask=valid[:, None])

    @triton.jit
    def _local_attention_fwd_kernel(qkv_ptr, bounds_ptr, out_ptr, lse_ptr, total, qkv_stride, out_stride,
                                    QK_SCALE: tl.constexpr, HEADS: tl.constexpr, DIM: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """BLOCK_M queries of one head (rotated `(total, 3, HEADS, DIM)` qkv) against the keys their windows reach,
        in one online-softmax pass over BLOCK_N-key blocks. Writes the output and `lse` `(heads, total)`: the log2
        of the sum of exp2 of the scores times QK_SCALE (the softmax scale times log2(e))."""
        head = tl.program_id(1)
        valid, rows = _block_rows(tl.program_id(0) * BLOCK_M, total, BLOCK_M)
        first, last = tl.load(bounds_ptr + rows), tl.load(bounds_ptr + total + rows)  # first and last partner
        q = _load_head(qkv_ptr, rows, valid, qkv_stride, head * DIM, DIM)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, DIM], tl.float32)
        key_hi = tl.max(last, 0) + 1
        for start_n in range(tl.min(first, 0), key_hi, BLOCK_N):
            keys = start_n + tl.arange(0, BLOCK_N)
            key_valid = keys < key_hi
            key_rows = tl.minimum(keys, total - 1)
            k = _load_head(qkv_ptr, key_rows, key_valid, qkv_stride, (HEADS + head) * DIM, DIM)
            v = _load_head(qkv_ptr, key_rows, key_valid, qkv_stride, (2 * HEADS + head) * DIM, DIM)
            allowed = (keys[None, :] >= first[:, None]) & (keys[None, :] <= last[:, None])
            scores = tl.where(allowed, tl.dot(q, tl.trans(k)) * QK_SCALE, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            p = tl.math.exp2(scores - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * out_stride + head * DIM + tl.arange(0, DIM)[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(lse_ptr + head * total + rows, m_i + tl.math.log2(l_i), mask=valid)

    @triton.jit
    def _local_attention_bwd_dq_kernel(qkv_ptr, bounds_ptr, cos_ptr, sin_ptr, out_ptr, grad_out_ptr, lse_ptr,
                                       delta_ptr, grad_qkv_ptr, total, qkv_stride, out_stride, grad_out_stride,
                                       grad_stride, trig_stride, QK_SCALE: tl.constexpr, SCALE: tl.constexpr,
                                       HEADS: tl.constexpr, DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                                       BLOCK_N: tl.constexpr, PAIRS: tl.constexpr):
        """Backward by query block: `delta = rowsum(dO * O)` (stored for the key kernel), then dq over the window's
        keys, written unrotated into the gradient of the unrotated qkv."""
        head = tl.program_id(1)
        valid, rows = _block_rows(tl.program_id(0) * BLOCK_M, total, BLOCK_M)
        first, last = tl.load(bounds_ptr + rows), tl.load(bounds_ptr + total + rows)  # first and last partner
        q = _load_head(qkv_ptr, rows, valid, qkv_stride, head * DIM, DIM)
        grad_out = _load_head(grad_out_ptr, rows, valid, grad_out_stride, head * DIM, DIM)
        out = _load_head(out_ptr, rows, valid, out_stride, head * DIM, DIM)
        delta = tl.sum(grad_out.to(tl.float32) * out.to(tl.float32), 1)
        tl.store(delta_ptr + head * total + rows, delta, mask=valid)
        lse = tl.load(lse_ptr + head * total + rows, mask=valid, other=0.0)
        dq = tl.zeros([BLOCK_M, DIM], tl.float32)
        key_hi = tl.max(last, 0) + 1
        for start_n in range(tl.min(first, 0), key_hi, BLOCK_N):
            keys = start_n + tl.arange(0, BLOCK_N)
            key_valid = keys < key_hi
            key_rows = tl.minimum(keys, total - 1)
            k = _load_head(qkv_ptr, key_rows, key_valid, qkv_stride, (HEADS + head) * DIM, DIM)
            v = _load_head(qkv_ptr, key_rows, key_valid, qkv_stride, (2 * HEADS + head) * DIM, DIM)
            allowed = (keys[None, :] >= first[:, None]) & (keys[None, :] <= last[:, None]) & valid[:, None]
            p = tl.where(allowed, tl.math.exp2(tl.dot(q, tl.trans(k)) * QK_SCALE - lse[:, None]), 0.0)
            ds = p * (tl.dot(grad_out, tl.trans(v)) - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        _store_head_unrotated(grad_qkv_ptr, cos_ptr, sin_ptr, rows, valid, grad_stride, trig_stride, head * DIM,
                              dq * SCALE, BLOCK_M, DIM // 2, PAIRS)

    @triton.jit
    def _local_attention_bwd_dkdv_kernel(qkv_ptr, bounds_ptr, cos_ptr, sin_ptr, grad_out_ptr, lse_ptr, delta_ptr,
                                         grad_qkv_ptr, total, qkv_stride, grad_out_stride, grad_stride, trig_stride,
                                         QK_SCALE: tl.constexpr, SCALE: tl.constexpr, HEADS: tl.constexpr,
                                         DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                         PAIRS: tl.constexpr):
        """Backward by key block: dk (written unrotated) and dv over the queries whose windows hold these keys."""
        head = tl.program_id(1)
        key_valid, key_rows = _block_rows(tl.program_id(0) * BLOCK_N, total, BLOCK_N)
        first, last = tl.load(bounds_ptr + key_rows), tl.load(bounds_ptr + total + key_rows)  # first and last partner
        k = _load_head(qkv_ptr, key_rows, key_valid, qkv_stride, (HEADS + head) * DIM, DIM)
        v = _load_head(qkv_ptr, key_rows, key_valid, qkv_stride, (2 * HEADS + head) * DIM, DIM)
        dk = tl.zeros([BLOCK_N, DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, DIM], tl.float32)
        query_hi = tl.max(last, 0) + 1
        for start_m in range(tl.min(first, 0), query_hi, BLOCK_M):
            queries = start_m + tl.arange(0, BLOCK_M)
            query_valid = queries < query_hi
            query_rows = tl.minimum(queries, total - 1)
            q = _load_head(qkv_ptr, query_rows, query_valid, qkv_stride, head * DIM, DIM)
            grad_out = _load_head(grad_out_ptr, query_rows, query_valid, grad_out_stride, head * DIM, DIM)
            lse = tl.load(lse_ptr + head * total + query_rows, mask=query_valid, other=0.0)
            delta = tl.load(delta_ptr + head * total + query_rows, mask=query_valid, other=0.0)
            allowed = (queries[None, :] >= first[:, None]) & (queries[None, :] <= last[:, None]) & key_valid[:, None]
            p = tl.where(allowed, tl.math.exp2(tl.dot(k, tl.trans(q)) * QK_SCALE - lse[None, :]), 0.0)  # (keys, q)
            dv += tl.dot(p.to(grad_out.dtype), grad_out)
            ds = p * (tl.dot(v, tl.trans(grad_out)) - delta[None, :])
            dk += tl.dot(ds.to(q.dtype), q)
        _store_head_unrotated(grad_qkv_ptr, cos_ptr, sin_ptr, key_rows, key_valid, grad_stride, trig_stride,
                              (HEADS + head) * DIM, dk * SCALE, BLOCK_N, DIM // 2, PAIRS)
        tl.store(grad_qkv_ptr + key_rows.to(tl.int64)[:, None] * grad_stride + (2 * HEADS + head) * DIM
                 + tl.arange(0, DIM)[None, :], dv.to(grad_qkv_ptr.dtype.element_ty), mask=key_valid[:, None])


_triton_failed: set[str] = set()


def _launch_triton(name: str, launch) -> bool:
    """Run a Triton kernel launch; if it fails to compile (an unsupported GPU or Triton), log once, return False,
    and never try that kernel again, so that the torch code takes over: a fast path must not break the model."""
    if name in _triton_failed:
        return False
    try:
        launch()
    except Exception as error:
        _triton_failed.add(name)
        logger.warning(f"Triton kernel {name} failed ({type(error).__name__}: {error}); using torch code instead")
        return False
    return True


def _rows_of_heads(x: torch.Tensor) -> bool:
    """`(total, parts, heads, head_dim)` whose heads of every part follow each other within each token."""
    heads, head_dim = x.shape[2:]
    return x.stride(3) == 1 and x.stride(2) == head_dim and x.stride(1) == heads * head_dim


def rotate_qk(src: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dst: torch.Tensor,
              inverse: bool = False, copy_v: bool | None = None, traced: bool = False, pairs: bool = False) -> None:
    """`dst` = `(total, 3, heads, head_dim)` `src` with RoPE applied to its q and k parts (`dst` may be `src`).

    `inverse=True` applies the transpose, which turns gradients of rotated q and k into gradients of unrotated ones.
    `cos`, `sin`: `(total, 1, head_dim)`. The arithmetic is `apply_rotary`'s, in fp32 (float64 for float64). One
    Triton kernel on CUDA, which reads and writes each element once; torch code elsewhere. `copy_v`: copy the v part
    too (default: when `dst` is not `src`). `traced`: launch through `torch.library.wrap_triton`, as the body of a
    `triton_op` must (tensors there may be fake, so `copy_v` must then be given). `pairs`: each q and k head holds
    rotate_half's pairs side by side, `(x_0, x_half, x_1, x_half+1, ...)` (`pair_rows`), in `src` and `dst`.
    """
    total, _, heads, head_dim = src.shape
    if copy_v is None:
        copy_v = dst.data_ptr() != src.data_ptr()
    if (triton is not None and src.is_cuda and _rows_of_heads(src) and _rows_of_heads(dst) and head_dim % 2 == 0
            and (head_dim // 2) & (head_dim // 2 - 1) == 0 and cos.stride(-1) == 1 and sin.stride() == cos.stride()):
        # Two tokens per program: 81 us forward and 58 us inverse at 24,576 base-model tokens on an H100, against
        # 101 and 70 us for a program per head, which loaded each token's cos/sin once per head.
        block = 2
        kernel = torch.library.wrap_triton(_rotary_kernel) if traced else _rotary_kernel
        if _launch_triton("rotary", lambda: kernel[(triton.cdiv(total, block),)](
            src, dst, cos, sin, total, src.stride(0), dst.stride(0), cos.stride(0), HEADS=heads,
            QK_P2=triton.next_power_of_2(2 * heads), V_P2=triton.next_power_of_2(heads * head_dim),
            HALF=head_dim // 2, INVERSE=inverse, COPY_V=copy_v, PAIRS=pairs, BLOCK=block, num_warps=4,
        )):
            return
    dtype = torch.promote_types(src.dtype, torch.float32)
    qk = src[:, :2].to(dtype)
    x1, x2 = (qk[..., 0::2], qk[..., 1::2]) if pairs else qk.chunk(2, dim=-1)
    cos1, cos2 = cos[:, None].to(dtype).chunk(2, dim=-1)
    sin1, sin2 = sin[:, None].to(dtype).chunk(2, dim=-1)
    if inverse:
        y1, y2 = x1 * cos1 + x2 * sin2, x2 * cos2 - x1 * sin1
    else:
        y1, y2 = x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2
    rotated = torch.stack((y1, y2), dim=-1).flatten(-2) if pairs else torch.cat((y1, y2), dim=-1)
    if copy_v:
        dst[:, 2] = src[:, 2]
    dst[:, :2] = rotated.to(dst.dtype)


def cross_entropy_and_grad_(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Summed cross-entropy of `(n, vocab)` CUDA logits; their gradient `softmax - onehot` replaces them, in place
    (None, logits untouched, where the kernel cannot run).

    One Triton kernel per chunk of the MLM loss: 229 us for 2,048 x 50,368 bf16 logits on an H100, against 391 us
    for inductor's kernel of `_cross_entropy_and_grad` (`bench/results/2026-11-26i-h100/`). A few rows per SM at a
    time keep a row in L2 between its two passes, so the logits are read from memory once.
    """
    rows, columns = logits.shape
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    programs = max(1, min(rows, 2 * torch.cuda.get_device_properties(logits.device).multi_processor_count))
    labels = labels.contiguous()
    if not _launch_triton("cross_entropy", lambda: _cross_entropy_kernel[(programs,)](
            logits, labels, losses, rows, columns, logits.stride(0), BLOCK=8192, num_warps=16)):
        return None
    return losses.sum()


def _geglu_launch(x: torch.Tensor, out: torch.Tensor, grad: torch.Tensor | None = None) -> bool:
    """`_geglu_kernel` over 2-D `x` (and `grad`) into `out`; False where it cannot run (torch code then does).

    Launched through `torch.library.wrap_triton`, so that inside a compiled graph inductor calls the kernel from its
    own generated code, as it calls its own kernels."""
    if triton is None or not x.is_cuda or x.stride(-1) != 1 or (grad is not None and grad.stride(-1) != 1):
        return False
    rows, width = x.shape[0], x.shape[1] // 2
    backward = grad is not None
    grad = grad if backward else x  # forward: an unread stand-in
    block_rows, block_cols = 16, 128
    grid = (triton.cdiv(rows, block_rows), triton.cdiv(width, block_cols))
    return _launch_triton("geglu", lambda: torch.library.wrap_triton(_geglu_kernel)[grid](
        x, grad, out, rows, width, x.stride(0), grad.stride(0), out.stride(0), BACKWARD=backward,
        BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=4,
    ))


def _geglu_forward(x: torch.Tensor) -> torch.Tensor:
    width = x.shape[-1] // 2
    out = x.new_empty(*x.shape[:-1], width)
    if not _geglu_launch(x.reshape(-1, 2 * width), out.view(-1, width)):
        inputs, gate = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
        out.copy_(F.gelu(inputs) * gate)
    return out


def _geglu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    width = x.shape[-1] // 2
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    if not _geglu_launch(x.reshape(-1, 2 * width), grad_x.view(-1, 2 * width), grad.reshape(-1, width)):
        dtype = torch.promote_types(x.dtype, torch.float32)
        inputs, gate = x.to(dtype).chunk(2, dim=-1)
        grad = grad.to(dtype)
        cdf = 0.5 * (1.0 + torch.erf(inputs * 0.5**0.5))
        pdf = torch.exp(-0.5 * inputs * inputs) * (2 * math.pi) ** -0.5
        grad_x[..., :width] = grad * gate * (cdf + inputs * pdf)
        grad_x[..., width:] = grad * inputs * cdf
    return grad_x


def _define_op(name: str, fn, fake):
    """A torch op over `fn`: a `torch.library.triton_op` where Triton is installed (torch.compile traces into it and
    inductor launches its kernels), else a plain custom op with `fake` for tracing (torch code only, and no warning
    about missing Triton at import)."""
    if triton is not None:
        return torch.library.triton_op(name, fn, mutates_args=())
    op = torch.library.custom_op(name, fn, mutates_args=())
    op.register_fake(fake)
    return op


def _register_geglu_ops() -> None:
    """`clinical_modernbert::geglu` (with autograd) and `geglu_backward`, once per process (at import: registering while
    torch.compile traces would break the graph). Another copy of this file may have registered them already.

    They are `torch.library.triton_op`s: torch.compile traces into them and inductor launches the kernels from its
    generated code. The Python launch of a Triton kernel costs about 70 us of CPU time, and custom-op autograd
    about 400 us more per forward and backward, which left training without CUDA graphs CPU-bound."""
    if hasattr(torch.ops.clinical_modernbert, "geglu"):
        return
    forward_op = _define_op("clinical_modernbert::geglu", _geglu_forward,
                            lambda x: x.new_empty(*x.shape[:-1], x.shape[-1] // 2))
    backward_op = _define_op("clinical_modernbert::geglu_backward", _geglu_backward,
                             lambda grad, x: torch.empty_like(x, memory_format=torch.contiguous_format))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, grad):
        return backward_op(grad.contiguous(), ctx.saved_tensors[0])

    forward_op.register_autograd(backward, setup_context=setup_context)


_register_geglu_ops()


def geglu(x: torch.Tensor) -> torch.Tensor:
    """`gelu(input) * gate` with `input, gate = x.chunk(2, dim=-1)` (exact GELU, computed in fp32): a torch op with
    one Triton kernel each way on CUDA.

    Its backward writes both halves' gradients into one tensor shaped like `x`, which is the gradient of `Wi`'s
    output as it stands, so `Wi` stays one matmul each way. Written in torch, the backward's `cat` of the halves
    became inductor's "pointwise cat", which evaluates both halves' formulas for every element and took 191 against
    95 us per layer at train-1024 on an H100; the workaround, one matmul per half (`split_linear`), cost two more
    matmuls and their split-K reductions per layer.
    """
    return torch.ops.clinical_modernbert.geglu(x)


# --------------------------------------------------------------------------------------------------------------------
# Local attention: a kernel for ModernBERT's sliding-window layers
# --------------------------------------------------------------------------------------------------------------------

_LOG2E = 1.4426950408889634
# (BLOCK_M queries, BLOCK_N keys, warps, pipeline stages) per kernel: on an H100 the fastest of the tiles that
# `python -m bench.local_attention --ours` tries (bench/results/2026-11-26k-h100/local_attention_*.log).
_LOCAL_ATTENTION_TILES = {"forward": (64, 64, 4, 3), "dq": (64, 64, 4, 2), "dkdv": (32, 64, 4, 3)}
_LOCAL_ATTENTION_HEAD_DIMS = (32, 64)  # the kernels' tiles hold a whole head (ModernBERT's: 64)


def local_attention_fits(qkv: torch.Tensor, cos: torch.Tensor | None = None) -> bool:
    """Whether the local-attention kernels run on this `(total, 3, heads, head_dim)` qkv (else torch code does)."""
    return (triton is not None and qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16) and qkv.dim() == 4
            and qkv.shape[1] == 3 and _rows_of_heads(qkv) and qkv.shape[-1] in _LOCAL_ATTENTION_HEAD_DIMS
            and (cos is None or cos.stride(-1) == 1))


def local_attention_bounds(cu_seqlens: torch.Tensor, total: int, window: int) -> torch.Tensor:
    """`(2, total)` int32: the first and last token each token attends to in a local layer (its document, at most
    `window` tokens either side). Built once per batch, on the device, without a sync."""
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    documents = torch.arange(cu_seqlens.shape[0] - 1, device=cu_seqlens.device)
    doc = torch.repeat_interleave(documents, cu_seqlens.diff(), output_size=total)  # output_size: no sync
    first = torch.maximum(cu_seqlens[doc], tokens - window)
    last = torch.minimum(cu_seqlens[doc + 1] - 1, tokens + window)
    return torch.stack((first, last)).to(torch.int32)


def _local_attention_chunks(rotated: torch.Tensor, bounds: torch.Tensor, window: int, scale: float,
                            chunk: int = 512):
    """The torch code's walk over the batch: per chunk of queries, the scores against the keys that can reach it.

    Yields `(start, end, lo, scores, q, k, v)`: queries `[start, end)`, keys from `lo`, `scores` `(heads, queries,
    keys)` scaled and masked to `-inf` outside each query's window; q, k, v are the whole batch's (rotated qkv) in the
    compute dtype (fp32, or float64 for float64)."""
    total = rotated.shape[0]
    q, k, v = rotated.to(torch.promote_types(rotated.dtype, torch.float32)).unbind(1)
    for start in range(0, total, chunk):
        end, lo = min(total, start + chunk), max(0, start - window)
        hi = min(total, end + window)
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k[lo:hi]) * scale
        keys = torch.arange(lo, hi, device=rotated.device)
        allowed = (keys >= bounds[0, start:end, None]) & (keys <= bounds[1, start:end, None])
        yield start, end, lo, scores.masked_fill(~allowed, float("-inf")), q, k, v


def _local_attention_forward(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor,
                             window: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rotated = torch.empty_like(qkv, memory_format=torch.contiguous_format)  # saved for backward instead of qkv
    if qkv.shape[0]:
        rotate_qk(qkv, cos, sin, rotated, copy_v=True, traced=True)
    return *_local_attention_rotated(rotated, bounds, window, scale), rotated


def _local_attention_rotated(rotated: torch.Tensor, bounds: torch.Tensor, window: int,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Local attention's output and lse over contiguous `(total, 3, heads, head_dim)` qkv with RoPE applied (the
    head layout does not matter: q.k is the same under any permutation q and k share)."""
    total, _, heads, head_dim = rotated.shape
    out = rotated.new_empty((total, heads, head_dim))
    # log2 of the sum of exp2(scaled scores * log2(e)); fp32 (float64 for float64 inputs)
    lse = rotated.new_empty((heads, total), dtype=torch.promote_types(rotated.dtype, torch.float32))
    if total == 0:
        return out, lse
    if local_attention_fits(rotated):
        block_m, block_n, warps, stages = _LOCAL_ATTENTION_TILES["forward"]
        if _launch_triton("local_attention", lambda: torch.library.wrap_triton(_local_attention_fwd_kernel)[
            (triton.cdiv(total, block_m), heads)
        ](
            rotated, bounds, out, lse, total, rotated.stride(0), out.stride(0), QK_SCALE=scale * _LOG2E,
            HEADS=heads, DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
        )):
            return out, lse
    for start, end, lo, scores, _, _, v in _local_attention_chunks(rotated, bounds, window, scale):
        chunk_lse = torch.logsumexp(scores, dim=-1)  # (heads, queries)
        probs = torch.exp(scores - chunk_lse[..., None])
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v[lo:lo + probs.shape[-1]]).to(out.dtype)
        lse[:, start:end] = chunk_lse * _LOG2E
    return out, lse


def _local_attention_backward(grad_out: torch.Tensor, rotated: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                              cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor, window: int, scale: float,
                              pairs: bool = False) -> torch.Tensor:
    """The gradient of the unrotated qkv, shaped like `rotated` (`pairs`: whose q and k heads hold rotate_half's
    pairs side by side, as the gradient then does too)."""
    total, _, heads, head_dim = rotated.shape
    grad_qkv = torch.empty_like(rotated, memory_format=torch.contiguous_format)
    if total == 0:
        return grad_qkv
    if (local_attention_fits(rotated, cos) and grad_out.stride(-1) == 1 and grad_out.stride(-2) == head_dim
            and sin.stride() == cos.stride()):
        delta = lse.new_empty((heads, total))  # rowsum(dO * O): written by the dq kernel, read by the dk/dv one
        common = dict(QK_SCALE=scale * _LOG2E, SCALE=scale, HEADS=heads, DIM=head_dim)

        def launch() -> None:
            block_m, block_n, warps, stages = _LOCAL_ATTENTION_TILES["dq"]
            torch.library.wrap_triton(_local_attention_bwd_dq_kernel)[(triton.cdiv(total, block_m), heads)](
                rotated, bounds, cos, sin, out, grad_out, lse, delta, grad_qkv, total, rotated.stride(0),
                out.stride(0), grad_out.stride(0), grad_qkv.stride(0), cos.stride(0),
                BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, PAIRS=pairs, **common,
            )
            block_m, block_n, warps, stages = _LOCAL_ATTENTION_TILES["dkdv"]
            torch.library.wrap_triton(_local_attention_bwd_dkdv_kernel)[(triton.cdiv(total, block_n), heads)](
                rotated, bounds, cos, sin, grad_out, lse, delta, grad_qkv, total, rotated.stride(0),
                grad_out.stride(0), grad_qkv.stride(0), cos.stride(0),
                BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, PAIRS=pairs, **common,
            )

        if _launch_triton("local_attention_backward", launch):
            return grad_qkv
    dtype = torch.promote_types(rotated.dtype, torch.float32)
    grad_out = grad_out.to(dtype)
    delta = (grad_out * out.to(dtype)).sum(-1).t()  # (heads, total)
    grad = torch.zeros((total, 3, heads, head_dim), dtype=dtype, device=rotated.device)  # of rotated q, k and v
    for start, end, lo, scores, q, k, v in _local_attention_chunks(rotated, bounds, window, scale):
        hi = lo + scores.shape[-1]
        probs = torch.exp(scores - lse[:, start:end, None] / _LOG2E)
        grad_scores = probs * (torch.einsum("qhd,khd->hqk", grad_out[start:end], v[lo:hi])
                               - delta[:, start:end, None]) * scale
        grad[start:end, 0] += torch.einsum("hqk,khd->qhd", grad_scores, k[lo:hi])
        grad[lo:hi, 1] += torch.einsum("hqk,qhd->khd", grad_scores, q[start:end])
        grad[lo:hi, 2] += torch.einsum("hqk,qhd->khd", probs, grad_out[start:end])
    rotate_qk(grad, cos, sin, grad, inverse=True, copy_v=False, pairs=pairs)  # gradients of the unrotated q and k
    grad_qkv.copy_(grad)
    return grad_qkv


def _register_local_attention_ops() -> None:
    """`clinical_modernbert::local_attention` (with autograd) and `local_attention_backward`, once per process, as
    `torch.library.triton_op`s (see `_register_geglu_ops`)."""
    if hasattr(torch.ops.clinical_modernbert, "local_attention"):
        return

    def fake_forward(qkv, cos, sin, bounds, window, scale):
        total, _, heads, head_dim = qkv.shape
        lse = qkv.new_empty((heads, total), dtype=torch.promote_types(qkv.dtype, torch.float32))
        return (qkv.new_empty((total, heads, head_dim)), lse,
                torch.empty_like(qkv, memory_format=torch.contiguous_format))

    forward_op = _define_op("clinical_modernbert::local_attention", _local_attention_forward, fake_forward)
    backward_op = _define_op(
        "clinical_modernbert::local_attention_backward", _local_attention_backward,
        lambda grad_out, rotated, *args: torch.empty_like(rotated, memory_format=torch.contiguous_format),
    )

    def setup_context(ctx, inputs, output):
        _, cos, sin, bounds, ctx.window, ctx.scale = inputs
        out, lse, rotated = output
        ctx.save_for_backward(rotated, out, lse, cos, sin, bounds)

    def backward(ctx, grad_out, grad_lse, grad_rotated):
        rotated, out, lse, cos, sin, bounds = ctx.saved_tensors
        grad_qkv = backward_op(grad_out.contiguous(), rotated, out, lse, cos, sin, bounds, ctx.window, ctx.scale)
        return grad_qkv, None, None, None, None, None

    forward_op.register_autograd(backward, setup_context=setup_context)


_register_local_attention_ops()


def local_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor, window: int,
                    scale: float) -> torch.Tensor:
    """ModernBERT's local attention over packed documents, RoPE included: `(total, 3, heads, head_dim)` unrotated
    qkv (the `Wqkv` output) -> `(total, heads, head_dim)`. Token i attends to tokens `bounds[0, i]` to `bounds[1,
    i]` (`local_attention_bounds`: its document, at most `window` positions away); `cos`, `sin`: `(total, 1,
    head_dim)`.

    On CUDA (fp16/bf16, head_dim 32 or 64: ModernBERT's is 64) it is Triton kernels written for this window.
    FlashAttention's tiles of 128 (or FA4's 192 x 128) keys visit 384 to 512 keys per query for the 129 a +-64
    window needs. Here a block of 64 queries visits at most 192 keys, and the backward writes the gradient of the
    unrotated qkv (dq and dk rotated back as they are stored) with no fp32 accumulator to zero and convert. RoPE
    is one pass in the forward (`rotate_qk`), whose output is what backward keeps. Elsewhere torch code computes the
    same, chunk by chunk.
    """
    return torch.ops.clinical_modernbert.local_attention(qkv, cos, sin, bounds, window, scale)[0]


# --------------------------------------------------------------------------------------------------------------------
# Modules (names match transformers' ModernBERT)
# --------------------------------------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in fp32, as transformers does, cast back to the input dtype."""
    x_float = x.float()
    return (x_float * cos + rotate_half(x_float) * sin).to(x.dtype)


def _init_role(module: nn.Module, role: str) -> nn.Module:
    """Mark a leaf Linear/Embedding with its init role: "in", "out", "embedding" or "final_out"."""
    module._init_std_role = role
    return module


class ClinicalModernBertRotaryEmbedding(nn.Module):
    """cos/sin of RoPE for arbitrary (restarting) positions, for one base theta."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self._gemm_frequencies: dict[tuple, torch.Tensor] = {}

    def _inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=device) / self.head_dim
        return 1.0 / (self.base**exponents)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, None].float() * self.inv_freq.float()  # (total_tokens, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (total_tokens, 1, head_dim)
        return emb.cos(), emb.sin()

    def gemm_frequencies(self, rotated: int, unrotated: int) -> torch.Tensor:
        """The per-column frequency table of quack's RoPE epilogue (`rope_posfreq_epi`) for `rotated` columns of
        `pair_rows` heads, then `unrotated` ones (v). Made once per device (needs quack-kernels)."""
        key = (self.inv_freq.device, rotated, unrotated)
        if key not in self._gemm_frequencies:
            self._gemm_frequencies[key] = _quack_rope.make_interleaved_inv_freq(
                self.inv_freq.double(), rotated, unrotated).to(self.inv_freq.device)
        return self._gemm_frequencies[key]


class ClinicalModernBertEmbeddings(nn.Module):
    def __init__(self, config: ClinicalModernBertConfig) -> None:
        super().__init__()
        self.tok_embeddings = _init_role(
            nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id), "embedding"
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        return self.drop(self.norm(embeds))


def split_linear(linear: nn.Module, hidden_states: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    """`linear(hidden_states).chunk(parts, -1)`, as one matmul per row block of the weight (layer blocks in training
    where the `geglu` op does not run: eager code, activations other than exact GELU).

    After one matmul and a chunk, backward concatenates the parts' gradients for the input-gradient matmul. inductor
    fuses that concatenation with the gradient formulas into a "pointwise cat" kernel, which evaluates every part's
    formula (GeGLU's exact GELU and its derivative) for every element; it runs at half of memory bandwidth. With one
    matmul per part, each part's gradient is its own kernel output, and the input gradients are summed by a
    pointwise add that inductor fuses into the norm's backward. Measured by `python -m bench.elementwise`. A
    wrapped layer (PEFT's LoRA, a quantised Linear) keeps its own forward: one call, then a chunk.
    """
    if type(linear) is not nn.Linear:
        return linear(hidden_states).chunk(parts, dim=-1)
    biases = linear.bias.chunk(parts) if linear.bias is not None else (None,) * parts
    return tuple(F.linear(hidden_states, w, b) for w, b in zip(linear.weight.chunk(parts), biases))


class ClinicalModernBertMLP(nn.Module):
    """GeGLU: `Wo(drop(act(input) * gate))` with `input, gate = Wi(x).chunk(2)`.

    `split_matmuls=True` (layer blocks, when training) changes how backward is computed, not what. Compiled on
    CUDA with Triton and exact GELU (ModernBERT's), `gelu(input) * gate` is one op (`geglu`) whose backward returns
    `Wi`'s output gradient whole; otherwise `input` and `gate` come from two matmuls (see `split_linear`).
    """

    def __init__(self, config: ClinicalModernBertConfig) -> None:
        super().__init__()
        self.Wi = _init_role(nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias), "in")
        self.act = ACT2FN[config.hidden_activation]
        self.exact_gelu = config.hidden_activation == "gelu"
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = _init_role(nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias), "out")

    def forward(self, hidden_states: torch.Tensor, split_matmuls: bool = False) -> torch.Tensor:
        if (self.exact_gelu and split_matmuls and hidden_states.is_cuda and triton is not None
                and torch.compiler.is_compiling()):  # traced into inductor's code, not launched from Python
            return self.Wo(self.drop(geglu(self.Wi(hidden_states))))  # one Wi matmul each way: see `geglu`
        if split_matmuls:
            inputs, gate = split_linear(self.Wi, hidden_states, 2)
        else:
            inputs, gate = self.Wi(hidden_states).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(inputs) * gate))


class ClinicalModernBertAttention(nn.Module):
    """Self-attention over packed documents; the backend is looked up in `ATTENTION_FUNCTIONS`."""

    def __init__(self, config: ClinicalModernBertConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.dropout_p = config.attention_dropout
        self.deterministic = config.deterministic_flash_attn
        self.layer_type = config.layer_types[layer_idx]
        self.local_window = config.local_window if self.layer_type == "sliding_attention" else None
        # FlashAttention's (left, right) window: -1 is unbounded
        self.window_size = (-1, -1) if self.local_window is None else (self.local_window, self.local_window)
        self.Wqkv = _init_role(nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias), "in")
        self.Wo = _init_role(nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias), "out")
        self.out_drop = nn.Dropout(config.attention_dropout) if config.attention_dropout > 0.0 else nn.Identity()

    def project(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`(total, hidden)` -> rotated `(total, 3, heads, head_dim)`."""
        qkv = self.Wqkv(hidden_states).view(-1, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        return torch.stack((apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v), dim=1)

    def attend(self, qkv: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """Rotated qkv -> `(total, hidden)` attention output, before `Wo`."""
        backend = resolve_attention_backend(
            self.config.attention_backend, qkv, training_dropout=self.training and self.dropout_p > 0
        )
        return ATTENTION_FUNCTIONS[backend](qkv, ctx, self).reshape(qkv.shape[0], -1)

    def forward(self, hidden_states: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        cos, sin = ctx.rope[self.layer_type]
        return self.out_drop(self.Wo(self.attend(self.project(hidden_states, cos, sin), ctx)))


def _qkv_block(attn_norm: nn.Module, attn: ClinicalModernBertAttention, hidden_states: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """attn_norm -> Wqkv -> RoPE: one compiled graph fuses the norm and the rotation around the matmul."""
    return attn.project(attn_norm(hidden_states), cos, sin)


def _output_block(layer: ClinicalModernBertEncoderLayer, hidden_states: torch.Tensor,
                  attn_output: torch.Tensor) -> torch.Tensor:
    """Wo -> residual -> mlp_norm -> GeGLU MLP -> residual."""
    hidden_states = hidden_states + layer.attn.out_drop(layer.attn.Wo(attn_output))
    return hidden_states + layer.mlp(layer.mlp_norm(hidden_states), split_matmuls=torch.is_grad_enabled())


def _varlen_layer_block(layer: ClinicalModernBertEncoderLayer, hidden_states: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, kernel: str,
                        rows: torch.Tensor | None = None, cu_seqlens_rows: torch.Tensor | None = None,
                        local_bounds: torch.Tensor | None = None, linear_kernel: str = "torch",
                        rope_gemm: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A whole layer around a varlen attention op, one compiled graph.

    `torch.nn.attention.varlen` and our FlashAttention-4 wrappers are torch custom ops, so dynamo traces the layer
    around them: q, k and v come straight out of the fused norm/RoPE kernels (no stack/unbind copies), and their
    gradients go straight into `Wqkv`'s backward. In training with FA4, RoPE runs inside the op instead (see
    `fa4_rotary_varlen_fwd`). `kernel="local"` (a local layer) runs `local_attention` over `local_bounds`, RoPE
    inside, instead of the varlen kernel. `linear_kernel="quack"` runs the projections and MLP on quack's GEMMs
    (`_quack_linear`, `_mlp_residual`); with `rope_gemm` (float positions and quack's frequency table) as well,
    `Wqkv`, RoPE and attention are one op, RoPE in the GEMM's epilogue (`rope_qkv_attention`). One graph per layer
    also means one Python call per layer and direction, which keeps the GPU fed.

    With `rows` (a global layer), only those tokens query: keys and values come from every token, and the output
    projection, residuals and MLP run on `rows` alone, which are returned.
    """
    attn = layer.attn
    # Unlike GeGLU's Wi, Wqkv stays one matmul: three (`split_linear`) saved 1.5 GiB at train-1024 but ran 1.5%
    # slower (`bench/results/2026-11-26f-h100/split_matmuls_ab/`).
    normed = layer.attn_norm(hidden_states)
    # Wqkv, RoPE (in the GEMM's epilogue) and attention as one op, `rope_qkv_attention`
    if rope_gemm is not None and rows is None and _plain_linear(attn.Wqkv) and kernel in ("local", "flash-attn-4"):
        dtype = hidden_states.dtype
        out = torch.ops.clinical_modernbert.rope_qkv_attention(
            normed.to(dtype), pair_rows(attn.Wqkv.weight.to(dtype), attn.head_dim), *rope_gemm, cos, sin,
            local_bounds if kernel == "local" else cu_seqlens, max_seqlen, attn.scale, *attn.window_size,
            attn.deterministic, kernel == "local")[0]
    else:
        qkv = attn.Wqkv(normed) if linear_kernel != "quack" else _quack_linear(attn.Wqkv, normed, hidden_states.dtype)
        out, hidden_states = _attention_block(attn, qkv.view(-1, 3, attn.num_heads, attn.head_dim), hidden_states,
                                              cos, sin, cu_seqlens, max_seqlen, kernel, rows, cu_seqlens_rows,
                                              local_bounds)
    out = out.reshape(out.shape[0], -1)
    if linear_kernel == "quack":  # the residual added in the GEMM's epilogue (attention dropout is off here)
        hidden_states = _quack_linear(attn.Wo, out, hidden_states.dtype, residual=hidden_states)
    else:
        hidden_states = hidden_states + attn.out_drop(attn.Wo(out))
    return _mlp_residual(layer, hidden_states, linear_kernel)


def _attention_block(attn: ClinicalModernBertAttention, qkv: torch.Tensor, hidden_states: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, kernel: str,
                     rows: torch.Tensor | None, cu_seqlens_rows: torch.Tensor | None,
                     local_bounds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`_varlen_layer_block`'s attention from the `(total, 3, heads, head_dim)` Wqkv output: RoPE, then the kernel.
    Returns the attention output and the residual stream (`rows`: the queries' rows alone)."""
    if kernel == "local":  # RoPE inside the op
        out = local_attention(qkv, cos, sin, local_bounds, attn.local_window, attn.scale)
    elif kernel == "flash-attn-4" and rows is None and torch.is_grad_enabled():  # RoPE inside the op (see there)
        out = torch.ops.clinical_modernbert.fa4_rotary_varlen_fwd(
            qkv, cos, sin, cu_seqlens, max_seqlen, attn.scale, *attn.window_size, attn.deterministic)[0]
    else:
        q, k, v = qkv.unbind(1)
        if torch.is_grad_enabled():
            # The attention op saves v for backward. As a view, v would keep the whole Wqkv output alive, unrotated
            # q and k included: 2/3 of it dead, 1.5 GiB at the base model's train-1024. Its own copy costs 0.6% of
            # the step and is what lets activation_memory_budget=1.0 (no recomputation) fit.
            v = v.contiguous()
        k = apply_rotary(k, cos, sin)
        if rows is None:
            q = apply_rotary(q, cos, sin)
        else:
            q = apply_rotary(q.index_select(0, rows), cos.index_select(0, rows), sin.index_select(0, rows))
            hidden_states = hidden_states.index_select(0, rows)
        out = _varlen_attn(kernel, q, k, v, cu_seqlens, max_seqlen, attn, cu_seqlens_rows)
    return out, hidden_states


def _plain_linear(module: nn.Module) -> bool:
    """A bias-free `nn.Linear` itself: what quack's GEMMs may replace. A wrapped layer (PEFT's LoRA, a quantised
    Linear) keeps its own forward, so its adapters are never bypassed."""
    return type(module) is nn.Linear and module.bias is None


def _quack_linear(linear: nn.Module, x: torch.Tensor, dtype: torch.dtype,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """`linear(x) (+ residual)` in `dtype` on quack's GEMM (`clinical_modernbert::quack_linear`), or through the
    module itself where it is not a plain Linear."""
    if not _plain_linear(linear):
        out = linear(x)
        return out if residual is None else residual + out
    return torch.ops.clinical_modernbert.quack_linear(x.to(dtype), linear.weight.to(dtype), residual)


def _mlp_residual(layer: ClinicalModernBertEncoderLayer, hidden_states: torch.Tensor,
                  linear_kernel: str) -> torch.Tensor:
    """`hidden + mlp(mlp_norm(hidden))`; `linear_kernel="quack"`: the fused `clinical_modernbert::geglu_mlp` op."""
    normed = layer.mlp_norm(hidden_states)
    if linear_kernel != "quack" or not (_plain_linear(layer.mlp.Wi) and _plain_linear(layer.mlp.Wo)):
        return hidden_states + layer.mlp(normed, split_matmuls=torch.is_grad_enabled())
    dtype, mlp = hidden_states.dtype, layer.mlp
    wi = interleave_halves(mlp.Wi.weight.to(dtype))  # compiled: one kernel with the cast autocast would make
    return torch.ops.clinical_modernbert.geglu_mlp(hidden_states, normed.to(dtype), wi, mlp.Wo.weight.to(dtype))[0]


def _embedding_block(embeddings: ClinicalModernBertEmbeddings, input_ids: torch.Tensor | None,
                     inputs_embeds: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor:
    """Token embedding -> norm -> dropout -> the residual stream's dtype, one compiled graph on CUDA.

    Compiled, the lookup, norm and cast are one kernel, and the embedding's backward is a scatter-add into the
    vocabulary-sized gradient instead of eager PyTorch's sort-based kernel (0.62 against 0.95 ms forward + backward
    for 24,576 tokens on an H100, `bench.elementwise`).
    """
    hidden_states = embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)
    return hidden_states if dtype is None else hidden_states.to(dtype)


def _batch_tables(rotary_emb: nn.ModuleDict, positions: torch.Tensor, cu_seqlens: torch.Tensor,
                  local_window: int | None,
                  gemm_frequencies: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """What every layer reads about the batch: `cu_seqlens`, then (cos, sin) per RoPE of `rotary_emb`, then, given
    `local_window`, the local-attention window table (`local_attention_bounds`), then, given `gemm_frequencies`
    (one per RoPE), the float positions and a copy of each table for RoPE in the GEMM (`rope_qkv_attention`).

    Under CUDA graphs this runs as a graph of its own, so that its outputs live in the graphs' memory pool and each
    layer's graph reads them in place. Made eagerly, they were inputs from outside the pool, which every layer's
    graph copied into its own buffers before each replay: three copies per layer (cos and sin are 6 MB each at
    train-1024), 66 per step for the base model.
    """
    tables = [cu_seqlens.clone()]  # a copy: as the graph's own output it lives in the pool too (an input would not)
    for rope in rotary_emb.values():
        tables.extend(rope(positions))
    if local_window is not None:
        tables.append(local_attention_bounds(cu_seqlens, positions.shape[0], local_window))
    if gemm_frequencies is not None:
        tables.append(positions.float())
        tables.extend(frequencies.clone() for frequencies in gemm_frequencies)
    return tuple(tables)


class ClinicalModernBertEncoderLayer(nn.Module):
    def __init__(self, config: ClinicalModernBertConfig, layer_idx: int) -> None:
        super().__init__()
        # Layer 0 has no attention norm: the embedding norm already normalised its input.
        if layer_idx == 0:
            self.attn_norm = nn.Identity()
        else:
            self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.attn = ClinicalModernBertAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.mlp = ClinicalModernBertMLP(config)

    def forward(self, hidden_states: torch.Tensor, ctx: AttentionContext,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """`rows`: ascending packed indices of the only tokens whose outputs are wanted, and returned (MLM
        training's last layer, whose masked tokens are all the head reads). A global layer on the fused varlen path
        then computes queries, output projection and MLP for those tokens only; elsewhere the whole layer runs."""
        cos, sin = ctx.rope[self.attn.layer_type]
        if ctx.compile and ctx.fused_varlen:  # the whole layer in one compiled graph
            block = maybe_compiled(_varlen_layer_block, True, self.attn.config.activation_memory_budget,
                                   ctx.cuda_graphs)
            linear_kernel = ctx.linear_kernel
            if rows is not None and self.attn.local_window is None:
                cu_seqlens_rows = torch.searchsorted(rows, ctx.cu_seqlens.to(rows.dtype)).to(torch.int32)
                return block(self, hidden_states, cos, sin, ctx.cu_seqlens, ctx.max_seqlen, ctx.varlen_kernel, rows,
                             cu_seqlens_rows, linear_kernel=linear_kernel)
            rope_gemm = None if ctx.rope_gemm is None else ctx.rope_gemm[self.attn.layer_type]
            if ctx.local_bounds is not None and self.attn.local_window is not None:
                hidden_states = block(self, hidden_states, cos, sin, ctx.cu_seqlens, ctx.max_seqlen, "local",
                                      local_bounds=ctx.local_bounds, linear_kernel=linear_kernel, rope_gemm=rope_gemm)
            else:
                hidden_states = block(self, hidden_states, cos, sin, ctx.cu_seqlens, ctx.max_seqlen, ctx.varlen_kernel,
                                      linear_kernel=linear_kernel, rope_gemm=rope_gemm)
        else:
            # The attention kernel runs eagerly; the blocks around it may be compiled (see `maybe_compiled`).
            qkv = maybe_compiled(_qkv_block, ctx.compile, cuda_graphs=ctx.cuda_graphs)(
                self.attn_norm, self.attn, hidden_states, cos, sin)
            hidden_states = maybe_compiled(_output_block, ctx.compile, cuda_graphs=ctx.cuda_graphs)(
                self, hidden_states, self.attn.attend(qkv, ctx))
        return hidden_states if rows is None else hidden_states.index_select(0, rows)


class ClinicalModernBertPredictionHead(nn.Module):
    def __init__(self, config: ClinicalModernBertConfig) -> None:
        super().__init__()
        self.dense = _init_role(nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias), "out")
        self.act = ACT2FN[config.classifier_activation]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden_states)))


# --------------------------------------------------------------------------------------------------------------------
# Pretrained base
# --------------------------------------------------------------------------------------------------------------------


class ClinicalModernBertPreTrainedModel(PreTrainedModel):
    config_class = ClinicalModernBertConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ClinicalModernBertEmbeddings", "ClinicalModernBertEncoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """ModernBERT's init: truncated normals by role (see `_init_role`); never touches loaded weights.

        Roles sit on the leaf modules because transformers 5 initialises remote-code models leaf by leaf.
        """
        config = self.config
        role = getattr(module, "_init_std_role", None)
        if role is not None:
            std = {
                "in": config.initializer_range,
                "out": config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers),
                "embedding": config.initializer_range,
                "final_out": config.hidden_size**-0.5,
            }[role]
            cutoff = (config.initializer_cutoff_factor or 3.0) * std
            if not getattr(module.weight, "_is_hf_initialized", False):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-cutoff, b=cutoff)
            bias = getattr(module, "bias", None)
            if bias is not None and not getattr(bias, "_is_hf_initialized", False):
                nn.init.zeros_(bias)
        elif isinstance(module, nn.LayerNorm):
            if not getattr(module.weight, "_is_hf_initialized", False):
                nn.init.ones_(module.weight)
            if module.bias is not None and not getattr(module.bias, "_is_hf_initialized", False):
                nn.init.zeros_(module.bias)
        elif isinstance(module, ClinicalModernBertRotaryEmbedding):
            # A non-persistent buffer: recompute it after construction on the meta device.
            module.inv_freq = module._inv_freq(device=module.inv_freq.device)

    def save_pretrained_native(self, save_directory: str, **kwargs) -> None:
        """Write a `modernbert` folder that vanilla transformers loads without remote code."""
        native_name = type(self).__name__.replace("ClinicalModernBert", "ModernBert")
        if not hasattr(transformers, native_name):
            raise ValueError(f"transformers {transformers.__version__} has no {native_name} to export to")
        native_config = transformers.ModernBertConfig(**self.config.to_modernbert_dict())
        native = getattr(transformers, native_name)(native_config)
        native.load_state_dict(self.state_dict(), strict=True)
        native.save_pretrained(save_directory, **kwargs)


def _check_inputs(
    config: ClinicalModernBertConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[int, int]:
    """Shape checks that turn would-be CUDA crashes into clear errors. Returns (batch_size, seq_len)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1])
    if cu_seqlens is not None and len(shape) == 1:
        shape = (1, shape[0])
    if len(shape) != 2:
        raise ValueError(f"input_ids must have shape (batch_size, seq_len), got {shape}")
    batch_size, seq_len = shape
    if batch_size == 0 or seq_len == 0:
        raise ValueError(f"empty batch: input_ids has shape {shape}")
    if attention_mask is not None and tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has shape {shape}")
    if cu_seqlens is None and seq_len > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {seq_len} exceeds max_position_embeddings={config.max_position_embeddings}; "
            "truncate, chunk, or pack documents with cu_seqlens"
        )
    return batch_size, seq_len


class ClinicalModernBertModel(ClinicalModernBertPreTrainedModel):
    """The encoder. Accepts padded rows, rows that pack several documents, or fully packed input with `cu_seqlens`."""

    # Training on quack's GEMMs rotates q and k in Wqkv's GEMM where it can (`rope_qkv_attention`); False keeps RoPE
    # in the attention ops (the benchmark's A/B, `bench.bench`'s ours-varlen-graphs-rope-pass).
    rope_in_gemm = True

    def __init__(self, config: ClinicalModernBertConfig) -> None:
        super().__init__(config)
        self.embeddings = ClinicalModernBertEmbeddings(config)
        self.layers = nn.ModuleList(
            [ClinicalModernBertEncoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.rotary_emb = nn.ModuleDict({
            "full_attention": ClinicalModernBertRotaryEmbedding(config.head_dim, config.global_rope_theta),
            "sliding_attention": ClinicalModernBertRotaryEmbedding(config.head_dim, config.local_rope_theta),
        })
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.tok_embeddings = value

    def _use_compile(self, device: torch.device) -> bool:
        mode = self.config.compile_layers
        if mode == "off":
            return False
        if mode == "on":
            return True
        return compile_supported(device)  # "auto": on CUDA with Triton, for training and inference alike

    def forward_packed(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, PackedBatch, list[torch.Tensor] | None]:
        """Run the encoder and return packed `(total_tokens, hidden)` states, the packing, and per-layer states.

        `output_rows`: ascending packed indices of the only tokens whose final states are wanted; the states
        returned are then `(len(output_rows), hidden)`, and the last layer may skip the other tokens (see
        `ClinicalModernBertEncoderLayer.forward`). Not with `output_hidden_states`.
        """
        if output_rows is not None and output_hidden_states:
            raise ValueError("output_rows selects the last layer's tokens; it cannot be combined with "
                             "output_hidden_states, which returns every layer's states for every token")
        batch_size, seq_len = _check_inputs(self.config, input_ids, inputs_embeds, attention_mask, cu_seqlens)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        packed = unpad_input(batch_size, seq_len, device, attention_mask, position_ids, cu_seqlens, max_seqlen)
        if packed.max_seqlen > self.config.max_position_embeddings:
            raise ValueError(
                f"a document of {packed.max_seqlen} tokens exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )

        device_type = device.type
        autocast_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        # CUDA autocast still runs the norms in fp32; the residual stream may then run in the autocast dtype.
        residual_dtype = autocast_dtype if self.config.residual_dtype == "autocast" else None
        use_compile = self._use_compile(device)
        token_ids = packed.unpad(input_ids.reshape(batch_size, seq_len)) if inputs_embeds is None else None
        embeds = None if inputs_embeds is None else packed.unpad(inputs_embeds.reshape(batch_size, seq_len, -1))
        cu_seqlens, max_seqlen, positions, rows = packed.cu_seqlens, packed.max_seqlen, packed.position_ids, output_rows
        # CUDA graphs for training steps only: in inference the static shapes cost more than launches do (infer-512:
        # -7% on an H100, BENCHMARKS.md), as `max_seqlen` rounds up to 1,024 and the batch gains a [PAD] document.
        cuda_graphs = (use_compile and self.config.cuda_graphs and device.type == "cuda" and packed.total_tokens > 0
                       and torch.is_grad_enabled() and not (self.gradient_checkpointing and self.training))
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the previous replay's outputs may be reused
            token_ids, embeds, positions, cu_seqlens, max_seqlen, rows = pad_to_static_shapes(
                token_ids, embeds, positions, cu_seqlens, max_seqlen, rows, self.config.pad_token_id or 0)
        embed = maybe_compiled(_embedding_block, use_compile and packed.total_tokens > 0, cuda_graphs=cuda_graphs)
        hidden_states = embed(self.embeddings, token_ids, embeds, residual_dtype)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        if packed.total_tokens == 0:  # every row is padding: nothing to attend over
            if output_rows is not None:
                hidden_states = hidden_states.index_select(0, output_rows)
            return self.final_norm(hidden_states), packed, all_hidden_states

        ctx = AttentionContext(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, rope={}, compile=use_compile,
                               cuda_graphs=cuda_graphs)
        compute_dtype = autocast_dtype or hidden_states.dtype
        varlen_possible = (
            self.config.attention_backend in ("auto", "flash_attention_2")
            and hidden_states.is_cuda
            and compute_dtype in (torch.float16, torch.bfloat16)
            and varlen_available()
        )
        if varlen_possible:
            ctx.varlen_kernel = resolve_varlen_kernel(
                self.config.varlen_kernel, hidden_states.device, self.config.head_dim,
                training_dropout=self.training and self.config.attention_dropout > 0,
            )
        if ctx.compile:
            ctx.fused_varlen = (
                varlen_possible
                and ctx.varlen_kernel != "flash-attn"  # flash_attn's kernels are no torch ops: the split path
                and not (self.training and self.config.attention_dropout > 0)
            )
        if (ctx.fused_varlen and torch.is_grad_enabled() and hidden_states.dtype == compute_dtype == torch.bfloat16
                and self.config.hidden_activation == "gelu" and not self.config.mlp_bias
                and not self.config.attention_bias
                and not (self.training and self.config.mlp_dropout > 0)):
            ctx.linear_kernel = resolve_linear_kernel(self.config.linear_kernel, hidden_states.device, cuda_graphs)
        local_kernels = (ctx.fused_varlen and self.config.local_attention_kernel == "auto" and triton is not None
                         and self.config.head_dim in _LOCAL_ATTENTION_HEAD_DIMS)  # fp16/bf16 holds (varlen_possible)
        # RoPE in Wqkv's GEMM: training with quack's GEMMs, where this quack release has the epilogue
        rope_gemm = (ctx.linear_kernel == "quack" and _quack_rope is not None and self.rope_in_gemm
                     and self.config.head_dim % 2 == 0)
        frequencies = None
        if rope_gemm:
            hidden = self.config.hidden_size
            frequencies = tuple(rope.gemm_frequencies(2 * hidden, hidden) for rope in self.rotary_emb.values())
        tables = maybe_compiled(_batch_tables, cuda_graphs, cuda_graphs=True)(
            self.rotary_emb, positions, cu_seqlens, self.config.local_window if local_kernels else None, frequencies)
        ctx.cu_seqlens, *rope = tables[: 1 + 2 * len(self.rotary_emb)]
        ctx.rope = {name: (rope[2 * i], rope[2 * i + 1]) for i, name in enumerate(self.rotary_emb)}
        extra = list(tables[1 + 2 * len(self.rotary_emb):])
        if local_kernels:
            ctx.local_bounds = extra.pop(0)
        if rope_gemm:
            float_positions = extra.pop(0)
            ctx.rope_gemm = {name: (float_positions, extra[i]) for i, name in enumerate(self.rotary_emb)}
        if varlen_possible:
            _log_once(f"Clinical ModernBERT varlen attention: {VARLEN_KERNEL_NAMES[ctx.varlen_kernel]}"
                      + (", compiled with each layer" if ctx.fused_varlen else "")
                      + ("; local layers: Triton local-attention kernels" if ctx.local_bounds is not None else "")
                      + ("; projections and MLP: quack's GEMMs" if ctx.linear_kernel == "quack" else ""))
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            layer_rows = rows if index == last else None
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(
                    partial(layer.__call__, ctx=ctx, rows=layer_rows), hidden_states
                )
            else:
                hidden_states = layer(hidden_states, ctx, layer_rows)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
        if cuda_graphs:  # drop the padding; states returned must not live in memory the next replay overwrites
            keep = packed.total_tokens if output_rows is None else output_rows.shape[0]
            hidden_states = hidden_states[:keep]
            if all_hidden_states is not None:
                all_hidden_states = [states[:packed.total_tokens].clone() for states in all_hidden_states]
        return self.final_norm(hidden_states), packed, all_hidden_states

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        r"""
        Args:
            input_ids: `(batch_size, seq_len)` token ids; with `cu_seqlens`, `(1, total_tokens)` or `(total_tokens,)`.
            attention_mask: `(batch_size, seq_len)`, 1 for real tokens. Padding may be on either side.
            position_ids: positions restarting at 0 mark documents packed into one row.
            cu_seqlens: `(num_docs + 1,)` int32 document boundaries of fully packed input (no padding).
            max_seqlen: longest document, a Python int (pass it to avoid a device sync).
        Returns:
            `BaseModelOutput` with `last_hidden_state` of shape `(batch_size, seq_len, hidden)`, zeros at padding.
        """
        if output_attentions:
            _log_once("output_attentions is not supported by Clinical ModernBERT (fused kernels); returning None")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        hidden, packed, all_hidden = self.forward_packed(
            input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, inputs_embeds, output_hidden_states
        )
        last_hidden_state = packed.pad(hidden)
        hidden_states = tuple(packed.pad(h) for h in all_hidden) if all_hidden is not None else None
        if not return_dict:
            return tuple(v for v in (last_hidden_state, hidden_states) if v is not None)
        return BaseModelOutput(last_hidden_state=last_hidden_state, hidden_states=hidden_states)


# --------------------------------------------------------------------------------------------------------------------
# Task heads
# --------------------------------------------------------------------------------------------------------------------


def _pool(config: ClinicalModernBertConfig, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`(batch, seq, hidden)` -> `(batch, hidden)`: the first real token (cls) or the mean of real tokens."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    attention_mask = attention_mask.to(hidden.device)
    if config.classifier_pooling == "cls":
        first = attention_mask.long().argmax(dim=1)  # the first real token, whichever side the padding is on
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _sequence_loss(config: ClinicalModernBertConfig, num_labels: int, logits: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1)) if num_labels == 1 else \
            F.mse_loss(logits.float(), labels.float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels).float(), labels.view(-1))
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.to(logits.dtype).float())
    raise ValueError(f"problem_type={config.problem_type!r} is not one of regression, single_label_classification, "
                     "multi_label_classification")


def _cross_entropy_and_grad(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of `(n, vocab)` logits and its gradient `softmax - onehot`, in the logits' dtype."""
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
    loss = (lse.squeeze(1) - logits32.gather(1, labels[:, None]).squeeze(1)).sum()
    # The one-hot as a comparison with an index, not a scatter: compiled, the gradient is one pass over the logits
    # after the log-sum-exp (0.47 against 0.75 ms per 2,048 x 50,368 chunk on an H100, `bench.elementwise`).
    onehot = torch.arange(logits.shape[1], device=logits.device)[None, :] == labels[:, None]
    return loss, (torch.exp(logits32 - lse) - onehot.to(torch.float32)).to(logits.dtype)


_ADDMM_OUT_DTYPE = "dtype_out" in torch.ops.aten.addmm.overloads()  # torch >= 2.9; CUDA kernels only


def _matmul_fp32_out(a: torch.Tensor) -> bool:
    """Whether cuBLAS writes `a @ b` in fp32 directly (CUDA, half-precision inputs, torch >= 2.9)."""
    return _ADDMM_OUT_DTYPE and a.is_cuda and a.dtype in (torch.float16, torch.bfloat16)


def _add_matmul_fp32(accumulator: torch.Tensor, a: torch.Tensor, b: torch.Tensor, overwrite: bool = False) -> None:
    """`accumulator += a @ b` (`overwrite`: `accumulator = a @ b`) into an fp32 accumulator, for half-precision
    `a` and `b`.

    On CUDA the sum happens in the matmul itself (cuBLAS with beta=1 and an fp32 output; beta=0 to overwrite, which
    reads nothing): no half-precision product, no fp32 copy of it and no separate add, each the size of the
    vocabulary projection, per chunk.
    """
    if _matmul_fp32_out(a):
        torch.addmm(accumulator, a, b, beta=0.0 if overwrite else 1.0, out_dtype=torch.float32, out=accumulator)
    elif overwrite:
        accumulator.copy_(a @ b)
    else:
        accumulator += (a @ b).float()


class _LinearCrossEntropy(torch.autograd.Function):
    """`sum(cross_entropy(hidden @ weight.T + bias, labels))`, `chunk` rows at a time, gradients made in forward.

    Each chunk's logits are computed, turned into the loss and `d loss / d logits`, and multiplied back into the
    gradients of `hidden`, `weight` and `bias` at once, so full-vocabulary logits never exist for more than one
    chunk and backward is a scaling (the scheme of Liger-Kernel's fused linear cross-entropy). Matmuls run in
    `compute_dtype` (the autocast dtype); the softmax and the weight-gradient accumulation run in fp32.

    Where cuBLAS writes fp32 (`_matmul_fp32_out`), the bias gradient is one more column of the weight-gradient
    matmul: `hidden` gains a column of ones, so each chunk's `softmax - onehot` is summed over its rows inside the
    matmul instead of by a reduction that reads the chunk's logits once more (79 us per 2,048-row chunk on an H100).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk, compute_dtype):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
            b = bias.to(compute_dtype) if bias is not None else None
            grad_hidden = torch.empty_like(h) if need_hidden else None
            need_bias = bias is not None and need_bias
            # cuBLAS writes fp32: the first chunk overwrites the accumulator (no zeros to write and read back)
            overwrite = need_weight and h.shape[0] > 0 and _matmul_fp32_out(h)
            bias_in_matmul = overwrite and need_bias
            h_weight_grad = h  # the weight gradient's right operand: with a column of ones for the bias gradient
            if bias_in_matmul:
                width = h.shape[1]
                h_weight_grad = h.new_zeros((h.shape[0], -(-(width + 1) // 8) * 8))  # rows stay 16-byte aligned
                h_weight_grad[:, :width] = h
                h_weight_grad[:, width] = 1
            grad_weight = grad_bias = accumulator = None
            if need_weight:
                accumulator = (weight.new_empty if overwrite else weight.new_zeros)(
                    (weight.shape[0], h_weight_grad.shape[1]), dtype=torch.float32)
                grad_weight = accumulator[:, : h.shape[1]] if bias_in_matmul else accumulator
            if bias_in_matmul:
                grad_bias = accumulator[:, h.shape[1]]
            elif need_bias:
                grad_bias = torch.zeros_like(bias, dtype=torch.float32)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            compiled = maybe_compiled(_cross_entropy_and_grad, compile_supported(hidden.device))
            for start in range(0, h.shape[0], chunk):
                h_chunk = h[start : start + chunk]
                logits = F.linear(h_chunk, w, b)
                chunk_loss = None
                if triton is not None and logits.is_cuda and logits.stride(1) == 1:
                    grad_logits = logits
                    chunk_loss = cross_entropy_and_grad_(grad_logits, labels[start : start + chunk])
                if chunk_loss is None:
                    # A one-row chunk would make dynamo specialise on size 1 and recompile: run it eagerly.
                    ce = compiled if h_chunk.shape[0] > 1 else _cross_entropy_and_grad
                    chunk_loss, grad_logits = ce(logits, labels[start : start + chunk])
                loss += chunk_loss
                if grad_hidden is not None:
                    torch.mm(grad_logits, w, out=grad_hidden[start : start + chunk])
                if accumulator is not None:
                    _add_matmul_fp32(accumulator, grad_logits.t(), h_weight_grad[start : start + chunk],
                                     overwrite=overwrite and start == 0)
                if need_bias and not bias_in_matmul:  # fp32 sum without an fp32 copy of the chunk's logits
                    grad_bias += grad_logits.sum(0, dtype=torch.float32)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = lambda grad: None if grad is None else grad * grad_loss  # noqa: E731
        hidden_grad = scale(grad_hidden)
        return (
            hidden_grad.to(ctx.hidden_dtype) if hidden_grad is not None else None,
            scale(grad_weight), scale(grad_bias), None, None, None,
        )


class ClinicalModernBertForMaskedLM(ClinicalModernBertPreTrainedModel):
    # transformers 5 maps tied parameters explicitly; 4.x lists the tied keys.
    _tied_weights_keys = (
        {"decoder.weight": "model.embeddings.tok_embeddings.weight"} if _TRANSFORMERS_MAJOR >= 5 else ["decoder.weight"]
    )

    def __init__(self, config: ClinicalModernBertConfig) -> None:
        super().__init__(config)
        self.model = ClinicalModernBertModel(config)
        self.head = ClinicalModernBertPredictionHead(config)
        self.decoder = _init_role(nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias), "out")
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def _chunked_loss(self, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        """Mean cross-entropy over masked tokens through `_LinearCrossEntropy`: no stored logits, no recomputation."""
        total = labels.shape[0]
        if total == 0:
            return hidden.sum() * 0.0  # no masked token in the batch: a zero loss that still has a graph
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        compute_dtype = torch.get_autocast_dtype(device_type) if autocast else self.decoder.weight.dtype
        head_out = self.head(hidden)
        loss_sum = _LinearCrossEntropy.apply(
            head_out, self.decoder.weight, self.decoder.bias, labels, chunk, compute_dtype
        )
        return loss_sum / total

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        masked_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        r"""
        labels: `(batch_size, seq_len)` token ids to predict, `-100` elsewhere. With `config.sparse_prediction`, only
            labelled tokens go through the head and `logits` is `(num_labelled, vocab_size)`, in the order of
            `labels[labels != -100]`; otherwise `logits` is `(batch_size, seq_len, vocab_size)`.
        masked_positions: optional `(num_labelled,)` indices of the labelled tokens of a packed batch (`cu_seqlens`,
            no `attention_mask`), ascending: `(labels.flatten() != -100).nonzero()`. The training collator computes
            them on the host, so that finding the labelled tokens does not sync the device in the middle of a step.
        """
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        sparse = labels is not None and self.config.sparse_prediction
        output_rows = None
        if sparse and masked_positions is not None:
            if cu_seqlens is None or masked_positions.dim() != 1 or masked_positions.is_floating_point():
                raise ValueError(
                    f"masked_positions (shape {tuple(masked_positions.shape)}, {masked_positions.dtype}) must be 1-D "
                    "integer indices into a packed batch (cu_seqlens and no attention_mask)"
                )
            masked_positions = masked_positions.to((input_ids if input_ids is not None else inputs_embeds).device)
            # Only the masked tokens' final states are read: the last layer may skip the others.
            output_rows = None if output_hidden_states else masked_positions
        hidden, packed, all_hidden = self.model.forward_packed(
            input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, inputs_embeds, output_hidden_states,
            output_rows,
        )
        loss = None
        if sparse:
            flat_labels = packed.unpad(labels.reshape(packed.batch_size, packed.seq_len).to(hidden.device))
            if masked_positions is None:
                selected = (flat_labels != self.config.sparse_pred_ignore_index).nonzero().squeeze(1)
            else:
                selected = masked_positions
            masked_hidden = hidden if output_rows is not None else hidden.index_select(0, selected)
            masked_labels = flat_labels.index_select(0, selected)
            chunk = self.config.mlm_loss_chunk_size
            if chunk and self.training and torch.is_grad_enabled():
                logits = None  # never stored: each chunk's logits are recomputed in backward
                loss = self._chunked_loss(masked_hidden, masked_labels, chunk)
            else:
                logits = self.decoder(self.head(masked_hidden))  # (num_masked, vocab)
                loss = F.cross_entropy(logits.float(), masked_labels)
        else:
            logits = packed.pad(self.decoder(self.head(hidden)))  # (batch, seq, vocab)
            if labels is not None:
                loss = F.cross_entropy(
                    logits.view(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device),
                    ignore_index=self.config.sparse_pred_ignore_index,
                )
        hidden_states = tuple(packed.pad(h) for h in all_hidden) if all_hidden is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states) if v is not None)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden_states)


class _ClassifierBase(ClinicalModernBertPreTrainedModel):
    """Encoder + prediction head + dropout + linear classifier, shared by the classification heads."""

    num_outputs: int | None = None  # None: config.num_labels

    def __init__(self, config: ClinicalModernBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ClinicalModernBertModel(config)
        self.head = ClinicalModernBertPredictionHead(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.classifier = _init_role(nn.Linear(config.hidden_size, self.num_outputs or config.num_labels), "final_out")
        self.post_init()

    def _encode(self, input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, inputs_embeds,
                output_hidden_states) -> BaseModelOutput:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
            return_dict=True,
        )

    def _classify(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.head(hidden)))


class ClinicalModernBertForSequenceClassification(_ClassifierBase):
    """Single-label, multi-label or regression, chosen by `config.problem_type` (or inferred like transformers)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        outputs = self._encode(input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, inputs_embeds,
                               output_hidden_states)
        logits = self._classify(_pool(self.config, outputs.last_hidden_state, attention_mask))
        loss = None if labels is None else _sequence_loss(self.config, self.num_labels, logits, labels)
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class ClinicalModernBertForTokenClassification(_ClassifierBase):
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        outputs = self._encode(input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, inputs_embeds,
                               output_hidden_states)
        logits = self._classify(outputs.last_hidden_state)  # (batch, seq, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.reshape(-1).to(logits.device))
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class ClinicalModernBertForQuestionAnswering(_ClassifierBase):
    """Extractive QA: start/end logits from a 2-way token classifier."""

    num_outputs = 2

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput | tuple:
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        outputs = self._encode(input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, inputs_embeds,
                               output_hidden_states)
        logits = self._classify(outputs.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            seq_len = start_logits.shape[1]
            # Out-of-range answers (truncated away) are clamped to seq_len and ignored, as in transformers.
            start = start_positions.reshape(-1).clamp(0, seq_len)
            end = end_positions.reshape(-1).clamp(0, seq_len)
            loss = (F.cross_entropy(start_logits.float(), start, ignore_index=seq_len)
                    + F.cross_entropy(end_logits.float(), end, ignore_index=seq_len)) / 2
        if not return_dict:
            return tuple(v for v in (loss, start_logits, end_logits, outputs.hidden_states) if v is not None)
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states
        )


class ClinicalModernBertForMultipleChoice(_ClassifierBase):
    """Inputs `(batch, num_choices, seq_len)`; one score per choice."""

    num_outputs = 1

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MultipleChoiceModelOutput | tuple:
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() < 3:
            raise ValueError("multiple choice expects input_ids of shape (batch_size, num_choices, seq_len)")
        num_choices = reference.shape[1]

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(-1, *t.shape[2:])

        outputs = self._encode(flat(input_ids), flat(attention_mask), flat(position_ids), None, None,
                               flat(inputs_embeds), output_hidden_states)
        logits = self._classify(_pool(self.config, outputs.last_hidden_state, flat(attention_mask)))
        logits = logits.view(-1, num_choices)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.view(-1))
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


# save_pretrained copies both .py files and writes auto_map (the config carries the full map for every head).
ClinicalModernBertConfig.register_for_auto_class()
ClinicalModernBertModel.register_for_auto_class("AutoModel")
ClinicalModernBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
ClinicalModernBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
ClinicalModernBertForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
ClinicalModernBertForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
ClinicalModernBertForMultipleChoice.register_for_auto_class("AutoModelForMultipleChoice")

__all__ = [
    "ClinicalModernBertModel",
    "ClinicalModernBertPreTrainedModel",
    "ClinicalModernBertForMaskedLM",
    "ClinicalModernBertForSequenceClassification",
    "ClinicalModernBertForTokenClassification",
    "ClinicalModernBertForQuestionAnswering",
    "ClinicalModernBertForMultipleChoice",
]
