"""The choice of varlen attention kernels, and the torch ops that wrap FlashAttention-4 (`flash-attn-4`).

FA4 runs only on Hopper/Blackwell GPUs (the GPU tests run it there). Here the ops are registered over a plain-torch
reference of the two functions they call, so that the glue (arguments, window sentinels, the log-sum-exp layout,
autograd and the fake tensors torch.compile traces with) is checked on every CI run.
"""

from __future__ import annotations

import functools
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

import modeling_clinical_modernbert as modeling

NAMESPACE = "clinical_modernbert_reference"


class ReferenceFlashAttn4:
    """`flash_attn.cute.interface._flash_attn_fwd/_bwd`, keyword for keyword, as dense attention per document."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @staticmethod
    def documents(cu_seqlens_q, cu_seqlens_k, left, right):
        """(q start, q end, k start, k end, allowed) per document; allowed[i, j]: query i may see key j."""
        bounds = zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist(), cu_seqlens_k[:-1].tolist(),
                     cu_seqlens_k[1:].tolist())
        for q_start, q_end, k_start, k_end in bounds:
            allowed = torch.ones(q_end - q_start, k_end - k_start, dtype=torch.bool)
            if left is not None or right is not None:  # windows count positions: queries are then every token
                assert q_end - q_start == k_end - k_start
                position = torch.arange(k_end - k_start)
                behind = position[:, None] - position[None]  # query - key
                if left is not None:
                    allowed &= behind <= left
                if right is not None:
                    allowed &= -behind <= right
            yield q_start, q_end, k_start, k_end, allowed

    @classmethod
    def attend(cls, q, k, v, cu_seqlens_q, cu_seqlens_k, scale, left, right):
        outputs, lses = [], []
        for q_start, q_end, k_start, k_end, allowed in cls.documents(cu_seqlens_q, cu_seqlens_k, left, right):
            qd = q[q_start:q_end].transpose(0, 1)  # (heads, n, head_dim)
            kd, vd = (x[k_start:k_end].transpose(0, 1) for x in (k, v))
            scores = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
            lses.append(scores.logsumexp(-1))
            outputs.append((scores.softmax(-1) @ vd).transpose(0, 1))
        return torch.cat(outputs), torch.cat(lses, dim=1)  # (total_q, heads, head_dim), (heads, total_q)

    @classmethod
    def gradients(cls, q, k, v, out, dout, lse, cu_seqlens_q, cu_seqlens_k, scale, left, right):
        """FlashAttention's backward by hand (autograd is off inside a custom op): P from the saved lse."""
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for q_start, q_end, k_start, k_end, allowed in cls.documents(cu_seqlens_q, cu_seqlens_k, left, right):
            qd, od, dod = (x[q_start:q_end].transpose(0, 1) for x in (q, out, dout))
            kd, vd = (x[k_start:k_end].transpose(0, 1) for x in (k, v))
            scores = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
            probs = torch.exp(scores - lse[:, q_start:q_end, None])
            dv[k_start:k_end] = (probs.transpose(-1, -2) @ dod).transpose(0, 1)
            dscores = probs * (dod @ vd.transpose(-1, -2) - (dod * od).sum(-1, keepdim=True))
            dq[q_start:q_end] = (dscores @ kd * scale).transpose(0, 1)
            dk[k_start:k_end] = (dscores.transpose(-1, -2) @ qd * scale).transpose(0, 1)
        return dq, dk, dv

    def _flash_attn_fwd(self, q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
                        softmax_scale=None, causal=False, window_size_left=None, window_size_right=None,
                        return_lse=False):
        assert max_seqlen_q == max_seqlen_k and not causal and return_lse
        self.calls.append(("fwd", max_seqlen_q, window_size_left, window_size_right))
        out, lse = self.attend(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, window_size_left,
                               window_size_right)
        return out, lse, None, None, None  # the package returns extras after (out, lse)

    def _flash_attn_bwd(self, q, k, v, out, dout, lse, softmax_scale=None, causal=False, window_size_left=None,
                        window_size_right=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                        max_seqlen_k=None, deterministic=False, dq=None, dk=None, dv=None):
        assert lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == torch.float32
        self.calls.append(("bwd", max_seqlen_q, window_size_left, window_size_right, deterministic))
        grads = self.gradients(q, k, v, out, dout, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale, window_size_left,
                               window_size_right)
        # like the package: caller-provided outputs (any aligned strides) are written and returned
        return tuple(grad if given is None else given.copy_(grad) for grad, given in zip(grads, (dq, dk, dv)))


@pytest.fixture(scope="module")
def reference_op():
    interface = ReferenceFlashAttn4()
    modeling._register_flash_attn_4_ops(interface, namespace=NAMESPACE)
    return getattr(torch.ops, NAMESPACE).fa4_varlen_fwd, interface


def dense_attention(q, k, v, cu_seqlens, window):
    """Every document in one (total x total) mask, through sdpa: an independent reference."""
    total = q.shape[0]
    document = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), cu_seqlens.diff())
    position = torch.arange(total)
    allowed = document[:, None] == document[None]
    if window >= 0:
        allowed &= (position[:, None] - position[None]).abs() <= window
    out = F.scaled_dot_product_attention(*(x.transpose(0, 1) for x in (q, k, v)), attn_mask=allowed)
    return out.transpose(0, 1)


def packed_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = [37, 5, 20]
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=generator, requires_grad=True) for _ in range(3))
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return q, k, v, cu_seqlens, max(lengths)


@pytest.mark.parametrize("window", [4, -1], ids=["local", "global"])
def test_flash_attn_4_op_matches_dense_attention_forward_and_backward(reference_op, window):
    op, interface = reference_op
    q, k, v, cu_seqlens, longest = packed_inputs()
    grad_out = torch.randn_like(q)
    out, lse = op(q, k, v, cu_seqlens, cu_seqlens, longest, longest, 8**-0.5, window, window, True)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = dense_attention(q, k, v, cu_seqlens, window)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    assert lse.shape == (2, q.shape[0])
    assert torch.allclose(out, expected, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, atol=1e-5)
    # -1 (global) reaches the package as None, the longest document as max_seqlen, in both directions
    size = None if window < 0 else window
    assert interface.calls[-2:] == [("fwd", longest, size, size), ("bwd", longest, size, size, True)]


def test_flash_attn_4_op_with_a_subset_of_queries(reference_op):
    """The last layer of MLM training attends from the masked tokens only: q holds some rows of each document
    (`cu_seqlens_q`), k and v all of them. Outputs and gradients equal full attention's at those rows."""
    op, _ = reference_op
    q, k, v, cu_seqlens, longest = packed_inputs(seed=4)
    rows = torch.tensor([0, 3, 36, 45, 58, 59])  # documents of 37, 5 and 20 tokens: none in the second
    cu_seqlens_q = torch.searchsorted(rows, cu_seqlens.long()).to(torch.int32)
    assert cu_seqlens_q.tolist() == [0, 3, 3, 6]
    grad_out = torch.randn(len(rows), *q.shape[1:])
    out, lse = op(q[rows], k, v, cu_seqlens_q, cu_seqlens, longest, longest, 8**-0.5, -1, -1, False)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = dense_attention(q, k, v, cu_seqlens, -1)[rows]
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    assert lse.shape == (2, len(rows))
    assert torch.allclose(out, expected, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, atol=1e-5)


def rope_tables(positions: list[int], head_dim: int = 8):
    cos, sin = modeling.ClinicalModernBertRotaryEmbedding(head_dim, base=10000.0)(torch.tensor(positions))
    return cos, sin  # (total, 1, head_dim) each


def test_rotate_qk_is_apply_rotary_and_its_inverse_is_the_transpose():
    """`rotate_qk` rotates the q and k parts of a packed qkv like `apply_rotary`; `inverse=True` is the transpose
    (what turns gradients of rotated q and k into gradients of the projection), in place or not, for any tables."""
    generator = torch.Generator().manual_seed(5)
    qkv = torch.randn(7, 3, 2, 8, generator=generator)
    cos, sin = rope_tables([0, 1, 2, 3, 0, 1, 2])
    rotated = torch.zeros_like(qkv)
    modeling.rotate_qk(qkv, cos, sin, rotated)
    for part in (0, 1):
        assert torch.allclose(rotated[:, part], modeling.apply_rotary(qkv[:, part], cos, sin), atol=1e-6)
    assert torch.equal(rotated[:, 2], qkv[:, 2])  # v copied
    # <R x, g> == <x, R^T g>, with tables whose halves differ (the model's repeat theirs)
    cos, sin = torch.randn(7, 1, 8, generator=generator), torch.randn(7, 1, 8, generator=generator)
    grad = torch.randn(7, 3, 2, 8, generator=generator)
    forward, backward = torch.zeros_like(qkv), grad.clone()
    modeling.rotate_qk(qkv, cos, sin, forward)
    modeling.rotate_qk(backward, cos, sin, backward, inverse=True)  # in place
    assert torch.allclose((forward[:, :2] * grad[:, :2]).sum(), (qkv[:, :2] * backward[:, :2]).sum(), rtol=1e-5)
    assert torch.equal(backward[:, 2], grad[:, 2])


def test_geglu_op_is_gelu_times_gate_with_both_gradients_in_one_tensor():
    """`geglu` (the op the MLP runs on CUDA) against `gelu(input) * gate` and autograd through it: exact GELU, any
    leading shape, float64 gradcheck of the hand-written backward, and torch's op checks (fake tensors, autograd
    registration, compile tracing)."""
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(3, 5, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    inputs, gate = x.chunk(2, dim=-1)
    expected = torch.nn.functional.gelu(inputs) * gate
    out = modeling.geglu(x)
    assert out.shape == (3, 5, 6) and torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(3, 5, 6, generator=generator, dtype=torch.float64)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    assert grad_x.is_contiguous() and torch.allclose(grad_x, expected_grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(modeling.geglu, (x[:2, :2].detach().requires_grad_(),))
    torch.library.opcheck(torch.ops.clinical_modernbert.geglu, (torch.randn(4, 10, requires_grad=True),))
    torch.library.opcheck(torch.ops.clinical_modernbert.geglu_backward, (torch.randn(4, 5), torch.randn(4, 10)))


def packed_qkv(seed: int):
    q, k, v, cu_seqlens, longest = packed_inputs(seed)
    qkv = torch.stack((q, k, v), dim=1).detach().requires_grad_()
    positions = [p for n in cu_seqlens.diff().tolist() for p in range(n)]
    return qkv, *rope_tables(positions), cu_seqlens, longest


def local_attention_batch(lengths: list[int], dtype=torch.float64, seed: int = 12):
    """Packed qkv `(total, 3, heads, head_dim)` for documents of `lengths`, with its RoPE tables and cu_seqlens."""
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(sum(lengths), 3, 2, 8, generator=generator, dtype=dtype, requires_grad=True)
    positions = [p for n in lengths for p in range(n)]
    return qkv, *rope_tables(positions), torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)


@pytest.mark.parametrize("chunk", [512, 7], ids=["one-chunk", "chunks"])
def test_local_attention_op_is_rope_then_windowed_attention_within_documents(monkeypatch, chunk):
    """`local_attention` (the local layers' op on CUDA; here its torch code, in query chunks as on a long batch)
    against RoPE by `apply_rotary` and dense masked attention: forward, and gradients of the unrotated qkv
    against autograd through the reference. Documents shorter and longer than the window, and of one token."""
    chunks = modeling._local_attention_chunks
    monkeypatch.setattr(modeling, "_local_attention_chunks", lambda *a, **k: chunks(*a, **k, chunk=chunk))
    window = 4
    qkv, cos, sin, cu_seqlens = local_attention_batch([13, 1, 3, 30])
    bounds = modeling.local_attention_bounds(cu_seqlens, 47, window)
    assert bounds.dtype == torch.int32 and bounds[:, 13].tolist() == [13, 13] and bounds[:, 20].tolist() == [17, 24]
    out = modeling.local_attention(qkv, cos, sin, bounds, window, 8**-0.5)
    q, k, v = qkv.unbind(1)
    cos, sin = cos.double(), sin.double()
    rotated_q, rotated_k = (x * cos + modeling.rotate_half(x) * sin for x in (q, k))  # apply_rotary, in float64
    expected = dense_attention(rotated_q, rotated_k, v, cu_seqlens, window)
    assert out.shape == (47, 2, 8) and torch.allclose(out, expected, atol=1e-12)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    (expected_grad,) = torch.autograd.grad(expected, qkv, grad_out)
    assert grad.is_contiguous() and torch.allclose(grad, expected_grad, atol=1e-12)
    assert not torch.allclose(grad[:, 2], torch.zeros_like(grad[:, 2]))


def test_local_attention_backward_passes_gradcheck_and_opcheck():
    """The hand-written backward of `local_attention` (RoPE's transpose included) against finite differences in
    float64, and torch's op checks of both ops (fake tensors, autograd registration, compile tracing)."""
    qkv, cos, sin, cu_seqlens = local_attention_batch([5, 1, 9])
    bounds = modeling.local_attention_bounds(cu_seqlens, 15, 3)
    cos, sin = cos.double(), sin.double()
    assert torch.autograd.gradcheck(lambda x: modeling.local_attention(x, cos, sin, bounds, 3, 0.5), (qkv,))
    qkv32 = qkv.detach().float().requires_grad_()
    args = (cos.float(), sin.float(), bounds, 3, 0.5)
    torch.library.opcheck(torch.ops.clinical_modernbert.local_attention, (qkv32, *args))
    out, lse, rotated = (x.detach() for x in torch.ops.clinical_modernbert.local_attention(qkv32, *args))
    torch.library.opcheck(torch.ops.clinical_modernbert.local_attention_backward,
                          (torch.randn_like(out), rotated, out, lse, *args))


@pytest.mark.parametrize("window", [4, -1], ids=["local", "global"])
def test_flash_attn_4_rotary_op_is_rope_then_attention(reference_op, window):
    """The training op (RoPE inside, gradients written into one qkv buffer) against RoPE by `apply_rotary` and
    dense attention, forward and backward."""
    qkv, cos, sin, cu_seqlens, longest = packed_qkv(seed=6)
    op = getattr(torch.ops, NAMESPACE).fa4_rotary_varlen_fwd
    out, lse, rotated = op(qkv, cos, sin, cu_seqlens, longest, 8**-0.5, window, window, False)
    q, k, v = qkv.unbind(1)
    q, k = modeling.apply_rotary(q, cos, sin), modeling.apply_rotary(k, cos, sin)
    expected = dense_attention(q, k, v, cu_seqlens, window)
    grad_out = torch.randn_like(expected)
    assert torch.allclose(rotated, torch.stack((q, k, v), dim=1), atol=1e-6)
    assert torch.allclose(out, expected, atol=1e-5) and lse.shape == (2, qkv.shape[0])
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    (expected_grad,) = torch.autograd.grad(expected, qkv, grad_out)
    assert torch.allclose(grad, expected_grad, atol=1e-5)


def test_a_subset_of_queries_needs_a_global_layer():
    attention = modeling.ClinicalModernBertAttention(tiny_config(), layer_idx=1)
    assert attention.local_window is not None
    q = torch.zeros(4, attention.num_heads, attention.head_dim)
    cu_seqlens = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="a subset of queries needs a global attention layer"):
        modeling._varlen_attn("torch", q[:2], q, q, cu_seqlens, 4, attention, torch.tensor([0, 2], dtype=torch.int32))


def test_flash_attn_4_op_traces_under_torch_compile(reference_op):
    """The fake (meta) implementations give the real shapes, so a compiled layer can hold the op in its graph."""
    op, _ = reference_op
    q, k, v, cu_seqlens, longest = packed_inputs(seed=1)

    def attend(q, k, v):
        return op(q, k, v, cu_seqlens, cu_seqlens, longest, longest, 8**-0.5, 4, 4, False)[0].square().sum()

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    expected = torch.autograd.grad(attend(q, k, v), (q, k, v))
    for grad, expected_grad in zip(grads, expected):
        assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_flash_attn_4_op_keeps_compiled_graphs_across_batch_shapes(reference_op):
    """max_seqlen is a SymInt in the op schema: a new longest document must not recompile the layer graphs."""
    import torch._dynamo.utils

    op, _ = reference_op
    compiled = torch.compile(
        lambda q, k, v, cu, longest: op(q, k, v, cu, cu, longest, longest, 8**-0.5, 4, 4, False)[0].sum(),
        backend="aot_eager", dynamic=True,
    )
    generator = torch.Generator().manual_seed(3)

    def run():
        lengths = torch.randint(3, 60, (int(torch.randint(1, 5, (1,), generator=generator)),), generator=generator)
        q, k, v = (torch.randn(int(lengths.sum()), 2, 8, generator=generator, requires_grad=True) for _ in range(3))
        cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        compiled(q, k, v, cu_seqlens, int(lengths.max())).backward()

    for _ in range(2):
        run()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(4):
        run()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("name", ["fa4_varlen_fwd", "fa4_varlen_bwd", "fa4_rotary_varlen_fwd",
                                  "fa4_rotary_varlen_bwd"])
def test_flash_attn_4_ops_pass_torch_opcheck(reference_op, name):
    """torch's own op checks: schema, autograd registration, fake tensors equal to real ones (shapes, dtypes)."""
    q, k, v, cu_seqlens, longest = packed_inputs(seed=2)
    settings = (cu_seqlens, cu_seqlens, longest, longest, 8**-0.5, 4, 4, False)
    ops = getattr(torch.ops, NAMESPACE)
    if name == "fa4_varlen_fwd":
        args = (q, k, v, *settings)
    elif name == "fa4_varlen_bwd":
        with torch.no_grad():
            out, lse = reference_op[0](q, k, v, *settings)
        args = (torch.randn_like(q), *(x.detach() for x in (q, k, v)), out, lse, *settings)
    else:
        qkv, cos, sin, cu_seqlens, longest = packed_qkv(seed=2)
        settings = (cu_seqlens, longest, 8**-0.5, 4, 4, False)
        args = (qkv, cos, sin, *settings)
        if name == "fa4_rotary_varlen_bwd":
            with torch.no_grad():
                out, lse, rotated = ops.fa4_rotary_varlen_fwd(*args)
            args = (torch.randn_like(out), rotated, out, lse, cos, sin, *settings)
    torch.library.opcheck(getattr(ops, name), args)


def test_registering_the_ops_twice_reuses_them(reference_op):
    op, _ = reference_op
    modeling._register_flash_attn_4_ops(ReferenceFlashAttn4(), namespace=NAMESPACE)  # e.g. a second copy of the file
    assert getattr(torch.ops, NAMESPACE).fa4_varlen_fwd is op


@pytest.fixture
def kernels(monkeypatch):
    """resolve_varlen_kernel on a pretend GPU: (compute capability, flash-attn-4 usable, flash-attn installed)."""

    def setup(capability: int, fa4: bool, flash_attn: bool) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (capability, 0))
        monkeypatch.setattr(modeling, "flash_attn_4_available", lambda: fa4)
        monkeypatch.setattr(modeling, "_flash_attn_varlen_qkvpacked", object() if flash_attn else None)

    return setup


@pytest.mark.parametrize(("capability", "fa4", "flash_attn", "dropout", "expected"), [
    (9, True, True, False, "flash-attn-4"),  # Hopper: FA4 first
    (10, True, False, False, "flash-attn-4"),  # Blackwell
    (8, True, True, False, "flash-attn"),  # Ampere: FA4 has no kernels here
    (8, True, False, False, "torch"),
    (9, False, False, False, "torch"),
    (9, True, True, True, "flash-attn"),  # attention dropout: only flash-attn's kernels have it
])
def test_auto_picks_the_fastest_kernel_that_runs(kernels, capability, fa4, flash_attn, dropout, expected):
    kernels(capability, fa4, flash_attn)
    assert modeling.resolve_varlen_kernel("auto", torch.device("cuda"), 64, training_dropout=dropout) == expected


def test_explicit_kernels_that_cannot_run_are_clear_errors(kernels):
    kernels(8, True, False)
    with pytest.raises(ValueError, match=r"pip install flash-attn-4.*capability 8\.x"):
        modeling.resolve_varlen_kernel("flash-attn-4", torch.device("cuda"), 64, training_dropout=False)
    with pytest.raises(ValueError, match="needs the flash-attn package"):
        modeling.resolve_varlen_kernel("flash-attn", torch.device("cuda"), 64, training_dropout=False)
    kernels(9, True, False)
    assert modeling.resolve_varlen_kernel("torch", torch.device("cuda"), 64, training_dropout=False) == "torch"
    with pytest.raises(ValueError, match="head_dim=12"):
        modeling.resolve_varlen_kernel("flash-attn-4", torch.device("cuda"), 12, training_dropout=False)


def test_config_rejects_unknown_kernels_and_keeps_ours_out_of_native_configs():
    with pytest.raises(ValueError, match="varlen_kernel='fa5' must be one of"):
        tiny_config(varlen_kernel="fa5")
    assert "varlen_kernel" not in tiny_config(varlen_kernel="torch").to_modernbert_dict()
    with pytest.raises(ValueError, match="local_attention_kernel='flash' must be one of"):
        tiny_config(local_attention_kernel="flash")
    assert "local_attention_kernel" not in tiny_config().to_modernbert_dict()
    with pytest.raises(ValueError, match="linear_kernel='cutlass' must be one of"):
        tiny_config(linear_kernel="cutlass")
    assert "linear_kernel" not in tiny_config().to_modernbert_dict()


def test_interleave_halves_pairs_each_input_row_with_its_gate_row():
    weight = torch.arange(6 * 4).reshape(6, 4)  # rows: input 0, 1, 2, then gate 0, 1, 2
    interleaved = modeling.interleave_halves(weight)
    assert interleaved[:, 0].tolist() == [0, 12, 4, 16, 8, 20]
    assert torch.equal(interleaved.view(3, 2, 4).transpose(0, 1).reshape(6, 4), weight)


def test_pair_rows_puts_each_heads_rotation_pairs_side_by_side():
    """`pair_rows` reorders each q and k head's rows `0, half, 1, half + 1, ...` and leaves v's; `rotate_qk` with
    `pairs=True` on that layout is `rotate_qk` in the same order, forward and inverse, for any tables."""
    weight = torch.arange(24)[:, None].expand(24, 3)  # q, k and v of 2 heads of head_dim 4
    paired = modeling.pair_rows(weight, head_dim=4)
    assert paired[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15, *range(16, 24)]
    assert torch.equal(paired[:, 1], paired[:, 0])
    order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])  # head_dim 8
    generator = torch.Generator().manual_seed(7)
    qkv = torch.randn(7, 3, 2, 8, generator=generator)
    cos, sin = torch.randn(7, 1, 8, generator=generator), torch.randn(7, 1, 8, generator=generator)
    paired_qkv = qkv.clone()
    paired_qkv[:, :2] = qkv[:, :2, :, order]
    for inverse in (False, True):
        expected, got = torch.empty_like(qkv), torch.empty_like(qkv)
        modeling.rotate_qk(qkv, cos, sin, expected, inverse=inverse)
        modeling.rotate_qk(paired_qkv, cos, sin, got, inverse=inverse, pairs=True)
        assert torch.allclose(got[:, :2], expected[:, :2, :, order], atol=1e-6)
        assert torch.equal(got[:, 2], qkv[:, 2])


class TorchRopeEpilogue:
    """The two functions of `quack.epilogue.rotary` that `rope_qkv_attention` calls, in float64 torch: quack's
    frequency table (per rotated column pair, inv_freq / 2pi in turns as a (hi, lo) float32 pair, one head's
    pattern repeated, then zeros for the columns left unrotated) and the GEMM whose epilogue rotates adjacent output
    columns by each row's position times that frequency."""

    @staticmethod
    def make_interleaved_inv_freq(inv_freq, rotary_n, nonrotary_n=0):
        turns = inv_freq.double() / (2 * torch.pi)
        hi = turns.float()
        head = torch.stack((hi, (turns - hi.double()).float()), dim=-1).reshape(-1)
        return F.pad(head.repeat(rotary_n // head.numel()), (0, nonrotary_n))

    @staticmethod
    def rope_posfreq_epi(a, b, tuned=True, pos=None, freq=None):
        assert a.is_contiguous() and not tuned
        acc = a.double() @ b.double()
        angle = 2 * torch.pi * pos.double()[:, None] * (freq[0::2].double() + freq[1::2].double())
        x1, x2 = acc[:, 0::2], acc[:, 1::2]
        rotated = torch.stack((x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()), dim=-1)
        return {"D": rotated.flatten(1).to(a.dtype)}


@pytest.mark.parametrize("local", [True, False], ids=["local", "global"])
def test_rope_qkv_attention_op_is_wqkv_then_rope_then_attention(reference_op, local):
    """`rope_qkv_attention` (training on quack's GEMMs: RoPE in Wqkv's epilogue, weight rows in `pair_rows` order)
    over torch stand-ins for quack's epilogue and FA4, against `Wqkv`, `apply_rotary` and dense attention:
    forward, and autograd's gradients of the input and of the weight in its own row order; and torch's op
    checks."""
    modeling._register_rope_qkv_attention_op(TorchRopeEpilogue, namespace=NAMESPACE)
    op = getattr(torch.ops, NAMESPACE).rope_qkv_attention
    lengths, heads, head_dim = [13, 1, 3, 30], 2, 8
    hidden, total = heads * head_dim, sum(lengths)
    generator = torch.Generator().manual_seed(21)
    normed = torch.randn(total, hidden, generator=generator, requires_grad=True)
    weight = (torch.randn(3 * hidden, hidden, generator=generator) * hidden**-0.5).requires_grad_()
    positions = [p for n in lengths for p in range(n)]
    rope = modeling.ClinicalModernBertRotaryEmbedding(head_dim, 10000.0)
    cos, sin = rope(torch.tensor(positions))
    frequencies = TorchRopeEpilogue.make_interleaved_inv_freq(rope.inv_freq, 2 * hidden, hidden)
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    window = 4 if local else -1
    tables = modeling.local_attention_bounds(cu_seqlens, total, window) if local else cu_seqlens
    args = (torch.tensor(positions, dtype=torch.float32), frequencies, cos, sin, tables, max(lengths), 8**-0.5,
            window, window, False, local)
    out, lse, rotated = op(normed, modeling.pair_rows(weight, head_dim), *args)
    q, k, v = (normed @ weight.t()).view(total, 3, heads, head_dim).unbind(1)
    expected = dense_attention(modeling.apply_rotary(q, cos, sin), modeling.apply_rotary(k, cos, sin), v,
                               cu_seqlens, window)
    assert out.shape == (total, heads, head_dim) and torch.allclose(out, expected, atol=1e-5)
    assert rotated.shape == (total, 3, heads, head_dim) and torch.allclose(rotated[:, 2], v)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (normed, weight), grad_out)
    expected_grads = torch.autograd.grad(expected, (normed, weight), grad_out)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, atol=1e-4), (grad - expected_grad).abs().max()
    if local:
        torch.library.opcheck(op, (normed.detach().requires_grad_(), weight.detach().requires_grad_(), *args))


def test_quack_missing_or_incomplete_means_the_torch_mlp(monkeypatch, caplog):
    """Without quack-kernels, or a release without what the MLP calls, `linear_kernel="auto"` is the torch MLP and
    `"quack"` is a clear error; with quack, "auto" takes it only under CUDA graphs."""
    monkeypatch.setattr(modeling, "_quack_state", None)
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name: None)
    assert not modeling.quack_gemms_available()
    monkeypatch.setattr(modeling.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    for cuda_graphs in (False, True):
        assert modeling.resolve_linear_kernel("auto", torch.device("cuda"), cuda_graphs) == "torch"
        assert modeling.resolve_linear_kernel("torch", torch.device("cuda"), cuda_graphs) == "torch"
        with pytest.raises(ValueError, match="linear_kernel='quack' needs the quack-kernels package"):
            modeling.resolve_linear_kernel("quack", torch.device("cuda"), cuda_graphs)

    fake = {name: types.ModuleType(name) for name in ("cutlass", "cutlass.cute", "cutlass.cutlass_dsl", "quack",
                                                       "quack.activation", "quack.gemm_config",
                                                       "quack.gemm_interface")}
    fake["cutlass"].const_expr = lambda x: x
    fake["cutlass"].cute = fake["cutlass.cute"]
    fake["cutlass.cutlass_dsl"].dsl_user_op = lambda fn: fn
    for name in ("activation", "gemm_config", "gemm_interface"):
        setattr(fake["quack"], name, fake[f"quack.{name}"])
    fake["quack.activation"].gelu_erf = fake["quack.activation"].dgelu_erf = lambda *a, **k: None
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(modeling, "_quack_state", None)
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name: object())
    with caplog.at_level("WARNING"):
        assert not modeling.quack_gemms_available()
    assert "quack.activation.gate_fn_map" in caplog.text and "quack.gemm_interface.gemm_gated" in caplog.text
    monkeypatch.setattr(modeling, "_quack_state", True)
    assert modeling.resolve_linear_kernel("auto", torch.device("cuda"), cuda_graphs=True) == "quack"
    assert modeling.resolve_linear_kernel("auto", torch.device("cuda"), cuda_graphs=False) == "torch"
    assert modeling.resolve_linear_kernel("quack", torch.device("cuda"), cuda_graphs=False) == "quack"


def test_flash_attn_4_release_without_our_arguments_is_not_used(monkeypatch, caplog):
    """A flash-attn-4 whose private functions changed must fall back to FlashAttention-2 with a warning."""
    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd = lambda q, k, v, cu_seqlens_q=None: None  # an older or newer signature
    interface._flash_attn_bwd = ReferenceFlashAttn4()._flash_attn_bwd
    cute = types.ModuleType("flash_attn.cute")
    cute.interface = interface
    package = types.ModuleType("flash_attn")
    package.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    monkeypatch.setattr(modeling, "_flash_attn_4_state", None)
    warnings = []
    monkeypatch.setattr(modeling.logger, "warning", warnings.append)
    assert modeling.flash_attn_4_available() is False
    assert len(warnings) == 1 and "_flash_attn_fwd(" in warnings[0] and "max_seqlen_q" in warnings[0]
    assert modeling.flash_attn_4_available() is False and len(warnings) == 1  # decided once


def test_without_flash_attn_4_installed_nothing_is_registered(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails as if not installed
    monkeypatch.setattr(modeling, "_flash_attn_4_state", None)
    assert modeling.flash_attn_4_available() is False
    assert not hasattr(torch.ops.clinical_modernbert, "fa4_varlen_fwd")


def test_a_triton_kernel_that_fails_to_launch_hands_over_to_torch_code(monkeypatch):
    """A Triton kernel that does not compile (an unsupported GPU, another Triton) is logged once, then skipped."""
    monkeypatch.setattr(modeling, "_triton_failed", set())
    warnings, calls = [], []
    monkeypatch.setattr(modeling.logger, "warning", warnings.append)

    def broken():
        calls.append(1)
        raise RuntimeError("no kernel image")

    assert modeling._launch_triton("rotary", broken) is False
    assert modeling._launch_triton("rotary", broken) is False
    assert len(calls) == 1 and len(warnings) == 1 and "rotary" in warnings[0] and "no kernel image" in warnings[0]
    assert modeling._launch_triton("cross_entropy", lambda: None) is True


def test_quack_path_keeps_wrapped_linears_and_their_adapters():
    """`linear_kernel="quack"` replaces only plain bias-free Linears: a PEFT LoRA-wrapped `Wqkv`, `Wo` or `Wi` runs
    its own forward, adapters included (here on CPU, where quack's ops do not even exist: reaching them fails)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(16)
    model = modeling.ClinicalModernBertModel(tiny_config(attention_backend="sdpa"))
    config = peft.LoraConfig(r=4, target_modules=["Wqkv", "Wo", "Wi"], init_lora_weights=False)
    layer = peft.get_peft_model(model, config).base_model.model.layers[1]
    assert not hasattr(torch.ops.clinical_modernbert, "quack_linear")
    hidden = torch.randn(10, model.config.hidden_size)
    for linear in (layer.attn.Wqkv, layer.attn.Wo):
        assert not modeling._plain_linear(linear)
        x = torch.randn(10, linear.in_features)
        assert torch.equal(modeling._quack_linear(linear, x, torch.float32), linear(x))
    wo, x = layer.attn.Wo, torch.randn(10, layer.attn.Wo.in_features)
    assert torch.equal(modeling._quack_linear(wo, x, torch.float32, residual=hidden), hidden + wo(x))
    expected = hidden + layer.mlp(layer.mlp_norm(hidden), split_matmuls=True)
    assert torch.equal(modeling._mlp_residual(layer, hidden, "quack"), expected)
    # the whole local layer, RoPE in the GEMM asked for: the wrapped Wqkv keeps RoPE in the attention op
    assert layer.attn.local_window is not None
    cu_seqlens = torch.tensor([0, 6, 10], dtype=torch.int32)
    positions = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    cos, sin = model.rotary_emb["sliding_attention"](positions)
    bounds = modeling.local_attention_bounds(cu_seqlens, 10, layer.attn.local_window)
    block = functools.partial(modeling._varlen_layer_block, layer, hidden, cos, sin, cu_seqlens, 6, "local",
                              local_bounds=bounds)
    rope_gemm = (positions.float(), torch.zeros(3 * model.config.hidden_size))
    assert torch.equal(block(linear_kernel="quack", rope_gemm=rope_gemm), block(linear_kernel="torch"))
    assert modeling._plain_linear(torch.nn.Linear(4, 4, bias=False))
    assert not modeling._plain_linear(torch.nn.Linear(4, 4))  # a bias: cuBLAS
