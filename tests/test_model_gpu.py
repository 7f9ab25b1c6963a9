"""CUDA-only checks of the unpadded varlen backend (skipped without a GPU; run them on the device, see docs/gpu.md)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import tiny_config

from bench.parity import measure
from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM, resolve_varlen_kernel, varlen_available

pytestmark = pytest.mark.gpu

# Both kernels that run on every Hopper GPU: torch's FA2, and FA4 where `flash-attn-4` is installed (docs/gpu.md).
KERNELS = ["torch", "flash-attn-4"]


def require(kernel: str) -> str:
    auto = resolve_varlen_kernel("auto", torch.device("cuda"), head_dim=64, training_dropout=False)
    if kernel == "flash-attn-4" and auto != "flash-attn-4":
        pytest.skip("flash-attn-4 is not installed or this GPU is not Hopper/Blackwell")
    return kernel


def four_layer_model(**overrides) -> ClinicalModernBertForMaskedLM:
    """Hidden 256 in 4 heads of 64 (FlashAttention's head size), 4 layers, a window of +-64, on the GPU."""
    config = tiny_config(attention_backend="flash_attention_2", hidden_size=256, intermediate_size=384,
                         num_attention_heads=4, num_hidden_layers=4, local_attention=128, max_position_embeddings=1024,
                         **overrides)
    return ClinicalModernBertForMaskedLM(config).cuda().train()


def packed_mlm_inputs(lengths: list[int]) -> dict:
    """Documents of `lengths` packed into one row, 30% of tokens labelled, with `cu_seqlens` and `max_seqlen`."""
    lengths = torch.tensor(lengths)
    ids = torch.randint(5, 128, (1, int(lengths.sum())), device="cuda")
    labels = torch.where(torch.rand(ids.shape, device="cuda") < 0.3, ids, -100)
    return dict(input_ids=ids, labels=labels, max_seqlen=int(lengths.max()),
                cu_seqlens=torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int().cuda())


def training_step(model: ClinicalModernBertForMaskedLM, inputs: dict, activity=None, **config):
    """Set the `config` fields, then one bf16-autocast training step: the loss, every parameter's gradient, and the
    names of the events `torch.profiler` recorded with `activity` (CPU: ops, CUDA: kernels; None: no profiler)."""
    for key, value in config.items():
        setattr(model.config, key, value)
    model.zero_grad(set_to_none=True)
    profiler = torch.profiler.profile(activities=[activity]) if activity is not None else contextlib.nullcontext()
    with profiler:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        torch.cuda.synchronize()
    names = " ".join(event.name for event in profiler.events()) if activity is not None else ""
    return loss.float().item(), {name: p.grad.float().clone() for name, p in model.named_parameters()}, names


def assert_trains_alike(step: tuple, reference: tuple) -> None:
    """Two `training_step` results: the loss within 0.5% and every gradient within 2% (norm of the difference)."""
    (loss, grads, _), (reference_loss, reference_grads, _) = step, reference
    assert abs(loss - reference_loss) <= 5e-3 * abs(reference_loss)
    for name, grad in reference_grads.items():
        assert (grads[name] - grad).norm() <= 2e-2 * grad.norm().clamp(min=1e-6), name


@pytest.fixture(scope="module", params=KERNELS)
def parity(request) -> dict:
    assert varlen_available(), "no varlen kernel: need torch >= 2.10 or flash_attn"
    return measure(num_layers=4, varlen_kernel=require(request.param))


def test_varlen_bf16_forward_within_3x_of_transformers(parity):
    row = parity["forward"]
    print(parity)
    assert row["ours_varlen_bf16"] <= 3 * row["transformers_sdpa_bf16"]
    assert row["ours_varlen_bf16"] < 2e-2


@pytest.mark.parametrize("grad", ["layer0_global_Wqkv", "layer1_local_Wqkv", "embeddings"])
def test_varlen_bf16_backward_within_3x_of_transformers(parity, grad):
    row = parity["backward"][grad]
    assert row["ours_varlen_bf16"] <= 3 * row["transformers_sdpa_bf16"], row


@pytest.mark.parametrize("kernel", KERNELS)
def test_varlen_packed_equals_padded_on_gpu(kernel):
    """cu_seqlens input through the varlen kernel gives the padded batch's outputs (bf16, same kernel)."""
    torch.manual_seed(0)
    config = tiny_config(attention_backend="flash_attention_2", varlen_kernel=require(kernel))
    model = ClinicalModernBertForMaskedLM(config).cuda().bfloat16().eval()
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


def test_flash_attn_4_and_torch_kernels_agree_on_a_training_step():
    """The same bf16 training step through FA4 and through torch's FA2: same loss and gradients (compiled layers)."""
    require("flash-attn-4")
    torch.manual_seed(5)
    model = four_layer_model()
    inputs = packed_mlm_inputs([700, 300, 65, 2])

    def step(kernel: str):
        model.config.varlen_kernel = kernel
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        return loss.float().item(), {name: p.grad.float().clone() for name, p in model.named_parameters()}

    fa2_loss, fa2_grads = step("torch")
    fa4_loss, fa4_grads = step("flash-attn-4")
    assert abs(fa4_loss - fa2_loss) <= 1e-2 * abs(fa2_loss)
    for name, grad in fa2_grads.items():
        assert (fa4_grads[name] - grad).norm() <= 3e-2 * grad.norm().clamp(min=1e-6), name


@pytest.mark.parametrize("kernel", KERNELS)
def test_last_layer_at_the_masked_tokens_only_trains_like_the_full_layer(kernel, monkeypatch):
    """Given the collator's masked_positions, the last (global) layer queries, projects and runs its MLP at the
    masked tokens only (`cu_seqlens_q` from `searchsorted`): same loss and gradients as the whole last layer."""
    torch.manual_seed(8)
    model = four_layer_model(compile_layers="on", varlen_kernel=require(kernel))
    assert model.config.layer_types[-1] == "full_attention"
    inputs = packed_mlm_inputs([700, 300, 65, 2])
    inputs["labels"][0, 1000:1065] = -100  # a document without a masked token: an empty query range
    positions = (inputs["labels"][0] != -100).nonzero().squeeze(1)
    searches = []
    searchsorted = torch.searchsorted
    monkeypatch.setattr(torch, "searchsorted", lambda *a, **k: searches.append(a) or searchsorted(*a, **k))

    def step(**extra):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs, **extra).loss
        loss.backward()
        return loss.float().item(), {name: p.grad.float().clone() for name, p in model.named_parameters()}

    full_loss, full_grads = step()
    assert not searches  # without masked_positions, the whole last layer runs
    rows_loss, rows_grads = step(masked_positions=positions)
    assert len(searches) == 1  # the last layer took the masked rows
    assert abs(rows_loss - full_loss) <= 5e-3 * abs(full_loss)
    for name, grad in full_grads.items():
        assert (rows_grads[name] - grad).norm() <= 2e-2 * grad.norm().clamp(min=1e-6), name


def test_auto_backend_picks_varlen_in_bf16_and_sdpa_in_fp32():
    from modeling_clinical_modernbert import resolve_attention_backend

    qkv = torch.zeros(4, 3, 2, 8, device="cuda")
    assert resolve_attention_backend("auto", qkv.bfloat16(), training_dropout=False) == "flash_attention_2"
    assert resolve_attention_backend("auto", qkv, training_dropout=False) == "sdpa"


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_training_step_matches_eager(kernel):
    """compile_layers='on' (Triton-fused blocks) trains like the plain path: same loss and gradients in bf16."""
    torch.manual_seed(1)
    config = tiny_config(attention_backend="flash_attention_2", varlen_kernel=require(kernel))
    model = ClinicalModernBertForMaskedLM(config).cuda().bfloat16().train()
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


@pytest.mark.parametrize("quantity", ["forward", "layer0_global_Wqkv", "layer1_local_Wqkv", "embeddings"])
def test_autocast_training_path_within_3x_of_transformers(parity, quantity):
    """Under bf16 autocast (the Trainer's bf16=True): compiled whole layers, bf16 residual stream, fused loss."""
    row = parity["autocast"]
    assert row["ours_training"][quantity] <= 3 * row["transformers_sdpa"][quantity], row


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_varlen_layers_follow_new_shapes_without_recompiling(kernel):
    """Every batch has a new total length and longest document: the compiled layer graphs must be reused
    (dynamic shapes), not recompiled per batch, and must keep matching the eager path."""
    import torch._dynamo.utils

    import modeling_clinical_modernbert as modeling

    torch.manual_seed(2)
    config = tiny_config(attention_backend="flash_attention_2", varlen_kernel=require(kernel))
    model = ClinicalModernBertForMaskedLM(config).cuda().train()
    generator = torch.Generator().manual_seed(3)

    def batch():
        lengths = torch.randint(3, 200, (int(torch.randint(1, 6, (1,), generator=generator)),), generator=generator)
        ids = torch.randint(5, 128, (1, int(lengths.sum())), generator=generator).cuda()
        labels = torch.where(torch.rand(ids.shape, generator=generator).cuda() < 0.3, ids, -100)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int().cuda()
        return dict(input_ids=ids, labels=labels, cu_seqlens=cu, max_seqlen=int(lengths.max()))

    def loss(inputs, mode):
        model.config.compile_layers = mode
        with torch.autocast("cuda", dtype=torch.bfloat16):
            value = model(**inputs).loss
        value.backward()  # the backward graphs must follow the shapes too
        model.zero_grad(set_to_none=True)
        return value.float().item()

    for _ in range(3):  # warm-up: the first compile, then the dynamic-shape recompile
        loss(batch(), "on")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(8):
        inputs = batch()
        compiled, eager = loss(inputs, "on"), loss(inputs, "off")
        assert abs(compiled - eager) <= 2e-2 * abs(eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert not modeling._compile_failed


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("budget", [0.8, 0.5])
def test_attention_runs_once_per_layer_under_an_activation_memory_budget(budget, kernel):
    """With activation_memory_budget < 1, backward recomputes cheap activations; it must not rerun the attention
    kernel (the planner prices ops by FLOPs, in which attention looks cheap; `_keep_attention_outputs`)."""
    torch.manual_seed(4)
    model = four_layer_model(activation_memory_budget=budget, compile_layers="on", varlen_kernel=require(kernel))
    config = model.config
    inputs = packed_mlm_inputs([900, 600, 400, 148])

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # compile
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        step()
        torch.cuda.synchronize()
    ops = [event.name for event in profile.events() if event.device_type == torch.autograd.DeviceType.CPU]
    # local layers: our Triton kernels, launched from inductor's code (no op call to count on the CPU side)
    kernels = [event.name for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    names = {"torch": [("aten::_flash_attention_forward", "aten::_flash_attention_backward")],
             "flash-attn-4": [("clinical_modernbert::fa4_varlen_fwd", "clinical_modernbert::fa4_varlen_bwd"),
                              ("clinical_modernbert::fa4_rotary_varlen_fwd",
                               "clinical_modernbert::fa4_rotary_varlen_bwd")]}[kernel]
    calls = tuple(sum(ops.count(pair[direction]) for pair in names)
                  + sum(name.startswith(("_local_attention_fwd", "_local_attention_bwd_dkdv")[direction])
                        for name in kernels)
                  for direction in (0, 1))
    local_layers = config.layer_types.count("sliding_attention")
    assert local_layers and sum(name.startswith("_local_attention_fwd") for name in kernels) == local_layers
    assert calls == (config.num_hidden_layers, config.num_hidden_layers)


@pytest.mark.parametrize("kernel", KERNELS)
def test_cuda_graphs_train_and_infer_like_the_plain_compiled_model(kernel, monkeypatch):
    """cuda_graphs=True (static shapes, reduce-overhead graphs) gives the plain compiled model's losses and
    gradients, over batches of new shapes and batches that replay a recorded shape; inference keeps working."""
    torch.manual_seed(9)
    plain = four_layer_model(compile_layers="on", varlen_kernel=require(kernel))
    graphs = four_layer_model(compile_layers="on", varlen_kernel=kernel, cuda_graphs=True)
    graphs.load_state_dict(plain.state_dict())
    batches = [packed_mlm_inputs(lengths) for lengths in ([700, 300, 65, 2], [1024, 1000], [512, 100, 3], [700, 300])]
    for inputs in batches:
        inputs["masked_positions"] = (inputs["labels"][0] != -100).nonzero().squeeze(1)
    import modeling_clinical_modernbert as modeling

    padded = []
    pad = modeling.pad_to_static_shapes
    monkeypatch.setattr(modeling, "pad_to_static_shapes", lambda *args: padded.append(args) or pad(*args))

    def step(model, inputs):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        return loss.float().item(), {name: p.grad.float().clone() for name, p in model.named_parameters()}

    from torch._dynamo.utils import counters

    skips = counters["inductor"]["cudagraph_skips"]
    for inputs in batches + batches[:2]:  # the last two replay graphs recorded for the first two
        plain_loss, plain_grads = step(plain, inputs)
        graph_loss, graph_grads = step(graphs, inputs)
        assert abs(graph_loss - plain_loss) <= 5e-3 * abs(plain_loss)
        for name, grad in plain_grads.items():
            assert (graph_grads[name] - grad).norm() <= 2e-2 * grad.norm().clamp(min=1e-6), name
    assert len(padded) == 6  # every training step of the graphs model, none of the plain one
    # No graph ran without CUDA graphs (inductor skips them where a kernel writes a graph input, for instance)
    assert counters["inductor"]["cudagraph_skips"] == skips
    assert any(key[0] is modeling._varlen_layer_block and key[2] for key in modeling._compiled_functions)
    plain.eval(), graphs.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        inputs = {key: batches[1][key] for key in ("input_ids", "cu_seqlens", "max_seqlen")}
        expected = plain.model(**inputs).last_hidden_state.float()
        first = graphs.model(**inputs).last_hidden_state.float()
    assert first.shape == expected.shape and len(padded) == 6  # inference runs without graphs
    assert (first - expected).norm() <= 2e-2 * expected.norm()


def test_triton_rotary_kernel_matches_the_torch_code():
    """`rotate_qk`'s Triton kernel against its torch code (run on CPU copies), forward and in-place inverse."""
    import modeling_clinical_modernbert as modeling

    if modeling.triton is None:
        pytest.skip("no Triton")
    torch.manual_seed(11)
    qkv = torch.randn(1000, 3, 12, 64, device="cuda", dtype=torch.bfloat16)
    cos, sin = modeling.ClinicalModernBertRotaryEmbedding(64, 160000.0).cuda()(torch.arange(1000, device="cuda") % 300)
    for inverse in (False, True):
        out, expected = torch.zeros_like(qkv), torch.zeros_like(qkv).cpu()
        modeling.rotate_qk(qkv, cos, sin, out, inverse=inverse)
        modeling.rotate_qk(qkv.cpu(), cos.cpu(), sin.cpu(), expected, inverse=inverse)
        assert (out.cpu().float() - expected.float()).abs().max() <= 1e-2  # a bf16 rounding at most
        assert torch.equal(out[:, 2], qkv[:, 2])
        in_place = qkv.clone()
        modeling.rotate_qk(in_place, cos, sin, in_place, inverse=inverse)
        assert torch.equal(in_place[:, :2], out[:, :2]) and torch.equal(in_place[:, 2], qkv[:, 2])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_geglu_kernels_match_the_torch_code(dtype):
    """`geglu`'s Triton kernels against its torch code (run on CPU copies), forward and backward, on a strided
    `(rows, 2 * width)` view whose width is no multiple of the kernel's column block."""
    import modeling_clinical_modernbert as modeling

    if modeling.triton is None:
        pytest.skip("no Triton")
    torch.manual_seed(13)
    wide = torch.randn(999, 2 * 200 + 16, device="cuda").to(dtype)
    x = wide[:, : 2 * 200]  # rows 416 apart
    grad = torch.randn(999, 200, device="cuda").to(dtype)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    out = torch.ops.clinical_modernbert.geglu(x)
    assert (out.cpu().float() - modeling._geglu_forward(x.cpu()).float()).abs().max() <= tolerance
    grad_x = torch.ops.clinical_modernbert.geglu_backward(grad, x)
    expected = modeling._geglu_backward(grad.cpu(), x.cpu())
    assert (grad_x.cpu().float() - expected.float()).abs().max() <= tolerance


def test_mlp_with_the_geglu_op_trains_like_two_matmuls():
    """What compiled training layers run (one Wi matmul, the `geglu` op) against the split-matmul torch code:
    outputs and gradients. The compiled-training tests cover the op inside inductor's code."""
    import modeling_clinical_modernbert as modeling

    if modeling.triton is None:
        pytest.skip("no Triton")
    torch.manual_seed(14)
    mlp = modeling.ClinicalModernBertMLP(tiny_config(intermediate_size=200, mlp_bias=True)).cuda()
    x = torch.randn(300, mlp.Wi.in_features, device="cuda", requires_grad=True)
    results = []
    for use_op in (True, False):
        mlp.zero_grad()
        out = mlp.Wo(modeling.geglu(mlp.Wi(x))) if use_op else mlp(x, split_matmuls=True)
        (grad_x,) = torch.autograd.grad(out.pow(2).sum(), x, retain_graph=True)
        out.pow(2).sum().backward()
        results.append((out, grad_x, mlp.Wi.weight.grad.clone(), mlp.Wi.bias.grad.clone(), mlp.Wo.weight.grad.clone()))
    for ours, reference in zip(*results):
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(700, 50368), (3, 1000), (1, 8193)])
def test_triton_cross_entropy_kernel_matches_torch(shape, dtype):
    """The MLM loss's in-place cross-entropy kernel against torch's cross-entropy and its autograd gradient."""
    import modeling_clinical_modernbert as modeling

    if modeling.triton is None:
        pytest.skip("no Triton")
    torch.manual_seed(12)
    logits = (torch.randn(shape, device="cuda") * 4).to(dtype)
    labels = torch.randint(0, shape[1], (shape[0],), device="cuda")
    reference = logits.float().requires_grad_()
    expected = torch.nn.functional.cross_entropy(reference, labels, reduction="sum")
    expected.backward()
    work = logits.clone()
    loss = modeling.cross_entropy_and_grad_(work, labels)
    assert loss.dtype == torch.float32 and abs(loss.item() - expected.item()) <= 1e-4 * abs(expected.item())
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert (work.float() - reference.grad).abs().max() <= tolerance


@pytest.mark.parametrize("head_dim", [64, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_local_attention_kernels_match_the_torch_code(dtype, head_dim):
    """`local_attention`'s Triton kernels against its torch code (run on CPU copies, fp32 inside): output,
    log-sum-exp and the unrotated qkv gradient, over documents shorter and longer than the window, documents that
    straddle kernel blocks, and one-token documents."""
    import modeling_clinical_modernbert as modeling

    if modeling.triton is None:
        pytest.skip("no Triton")
    torch.manual_seed(13)
    lengths = [1, 2, 64, 65, 129, 700, 17, 1, 300, 191]
    heads = 768 // head_dim
    qkv = torch.randn(sum(lengths), 3, heads, head_dim, device="cuda", dtype=dtype)
    cu_seqlens = torch.tensor([0, *lengths], device="cuda").cumsum(0).to(torch.int32)
    positions = torch.cat([torch.arange(n, device="cuda") for n in lengths])
    cos, sin = modeling.ClinicalModernBertRotaryEmbedding(head_dim, 10000.0).cuda()(positions)
    assert modeling.local_attention_fits(qkv, cos)
    assert not modeling.local_attention_fits(qkv.new_empty(4, 3, 2, 128), cos)  # head_dim 128: torch code
    bounds = modeling.local_attention_bounds(cu_seqlens, qkv.shape[0], 64)
    settings = (64, head_dim**-0.5)
    out, lse, rotated = modeling._local_attention_forward(qkv, cos, sin, bounds, *settings)
    cpu = [x.cpu() for x in (cos, sin, bounds)]
    expected_out, expected_lse, expected_rotated = modeling._local_attention_forward(qkv.cpu(), *cpu, *settings)
    assert not modeling._triton_failed
    torch.testing.assert_close(rotated.cpu().float(), expected_rotated.float(), rtol=1e-2, atol=1e-2)  # a rounding
    assert (out.cpu().float() - expected_out.float()).norm() <= 1e-2 * expected_out.float().norm()
    assert (lse.cpu() - expected_lse).abs().max() <= 2e-3
    grad_out = torch.randn_like(out)
    grad = modeling._local_attention_backward(grad_out, rotated, out, lse, cos, sin, bounds, *settings)
    expected = modeling._local_attention_backward(grad_out.cpu(), rotated.cpu(), out.cpu(), lse.cpu(), *cpu,
                                                  *settings)
    assert not modeling._triton_failed
    for part in range(3):  # dq, dk, dv
        error = (grad[:, part].cpu().float() - expected[:, part].float()).norm()
        assert error <= 2e-2 * expected[:, part].float().norm(), part
    # q and k heads in `pair_rows` order (RoPE in Wqkv's GEMM, `rope_qkv_attention`): forward on the paired qkv,
    # and the kernels' gradient, and `rotate_qk`'s inverse in place, in that order
    order = torch.arange(head_dim, device="cuda").view(2, head_dim // 2).t().reshape(-1)  # paired = x[..., order]
    unpaired = torch.argsort(order)  # x = paired[..., unpaired]
    paired = rotated.clone()
    paired[:, :2] = rotated[:, :2, :, order]
    paired_out, paired_lse = modeling._local_attention_rotated(paired, bounds, *settings)
    assert (paired_out - out).float().norm() <= 1e-2 * out.float().norm()
    paired_grad = modeling._local_attention_backward(grad_out, paired, out, lse, cos, sin, bounds, *settings,
                                                     pairs=True)
    rotated_grad = torch.randn_like(rotated)
    unrotated = rotated_grad[:, :, :, order].clone()
    modeling.rotate_qk(unrotated, cos, sin, unrotated, inverse=True, pairs=True)
    expected_unrotated = rotated_grad.cpu().clone()
    modeling.rotate_qk(expected_unrotated, *cpu[:2], expected_unrotated, inverse=True)
    assert not modeling._triton_failed
    for part in range(2):
        error = (paired_grad[:, part, :, unpaired].cpu().float() - expected[:, part].float()).norm()
        assert error <= 2e-2 * expected[:, part].float().norm(), part
        error = (unrotated[:, part, :, unpaired].cpu().float() - expected_unrotated[:, part].float()).norm()
        assert error <= 1e-2 * expected_unrotated[:, part].float().norm(), part
    assert (paired_grad[:, 2] - grad[:, 2]).float().norm() <= 1e-2 * grad[:, 2].float().norm()


@pytest.mark.parametrize("kernel", KERNELS)
def test_local_attention_kernel_trains_like_flash_attention(kernel):
    """Compiled training with the local layers on our kernels (`local_attention_kernel="auto"`) against the same
    step on FlashAttention (`"varlen"`): loss and every gradient; and the kernels did run."""
    torch.manual_seed(14)
    model = four_layer_model(compile_layers="on", varlen_kernel=require(kernel))
    inputs = packed_mlm_inputs([700, 300, 65, 2, 129])
    cuda = torch.profiler.ProfilerActivity.CUDA
    flash = training_step(model, inputs, cuda, local_attention_kernel="varlen")
    ours = training_step(model, inputs, cuda, local_attention_kernel="auto")
    import modeling_clinical_modernbert as modeling

    assert not modeling._compile_failed  # the kernels ran inside the compiled layers, not in an eager fallback
    assert "_local_attention_fwd_kernel" in ours[2] and "_local_attention_bwd_dkdv_kernel" in ours[2]
    assert "_local_attention" not in flash[2]
    assert_trains_alike(ours, flash)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_quack_gemms_train_like_cublas(cuda_graphs):
    """Compiled training with the layers' GEMMs on quack (`linear_kernel="quack"`: fused GeGLU and residual
    epilogues) against cuBLAS and the geglu op (`"torch"`): loss and every gradient, with and without CUDA graphs;
    and quack's ops did run."""
    import modeling_clinical_modernbert as modeling

    if not modeling.quack_gemms_available() or torch.cuda.get_device_capability()[0] not in (9, 10):
        pytest.skip("quack-kernels is not installed or this GPU is not Hopper/Blackwell")
    torch.manual_seed(15)
    model = four_layer_model(compile_layers="on", cuda_graphs=cuda_graphs)
    inputs = packed_mlm_inputs([700, 300, 65, 2, 129])
    cpu = torch.profiler.ProfilerActivity.CPU
    cublas = training_step(model, inputs, cpu, linear_kernel="torch")
    # with cuda_graphs, the first step warms up, the second records the graphs and the third replays them
    first, recorded, replayed = (training_step(model, inputs, cpu, linear_kernel="quack") for _ in range(3))
    assert not modeling._compile_failed
    ops = ["clinical_modernbert::geglu_mlp", "clinical_modernbert::quack_linear"]
    if modeling._quack_rope is not None:  # RoPE in Wqkv's GEMM (quack-kernels >= 0.6.5: quack.epilogue.rotary)
        ops.append("clinical_modernbert::rope_qkv_attention")
    for op in ops:
        assert op in first[2] and op not in cublas[2]
    for quack in (first, recorded, replayed):
        assert_trains_alike(quack, cublas)
    model.model.rope_in_gemm = False  # RoPE in the attention ops, after quack's plain GEMM for Wqkv
    rope_pass = training_step(model, inputs, cpu, linear_kernel="quack")
    assert "clinical_modernbert::rope_qkv_attention" not in rope_pass[2] and ops[1] in rope_pass[2]
    assert_trains_alike(rope_pass, cublas)


def test_quack_gemms_at_the_masked_tokens_only_train_like_cublas():
    """The harness's and the collator's configuration: `masked_positions` given, so the last layer runs its output
    projection and MLP at the masked tokens only, on quack's GEMMs and under CUDA graphs: loss and every gradient
    against cuBLAS with the whole last layer."""
    import modeling_clinical_modernbert as modeling

    if not modeling.quack_gemms_available() or torch.cuda.get_device_capability()[0] not in (9, 10):
        pytest.skip("quack-kernels is not installed or this GPU is not Hopper/Blackwell")
    torch.manual_seed(17)
    model = four_layer_model(compile_layers="on", cuda_graphs=True)
    inputs = packed_mlm_inputs([700, 300, 65, 2])
    inputs["labels"][0, 1000:1065] = -100  # a document without a masked token: an empty query range
    positions = (inputs["labels"][0] != -100).nonzero().squeeze(1)
    cublas = training_step(model, inputs, linear_kernel="torch")
    for _ in range(3):  # warm-up, recording, replay
        assert_trains_alike(training_step(model, dict(inputs, masked_positions=positions), linear_kernel="quack"),
                            cublas)
