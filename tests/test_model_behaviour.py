"""Config validation, training behaviour (checkpointing, dropout) and clear errors on bad input."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from configuration_clinical_modernbert import ClinicalModernBertConfig
from modeling_clinical_modernbert import (
    ClinicalModernBertForMaskedLM,
    ClinicalModernBertForMultipleChoice,
    ClinicalModernBertForQuestionAnswering,
    ClinicalModernBertForSequenceClassification,
    ClinicalModernBertForTokenClassification,
    ClinicalModernBertModel,
)

pytestmark = pytest.mark.oldest  # also run against the oldest supported transformers


def test_presets_have_modernbert_geometry():
    base = ClinicalModernBertConfig.from_preset("base")
    assert (base.vocab_size, base.hidden_size, base.intermediate_size, base.num_hidden_layers,
            base.num_attention_heads, base.max_position_embeddings) == (50368, 768, 1152, 22, 12, 8192)
    assert [i for i, t in enumerate(base.layer_types) if t == "full_attention"] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert (base.global_rope_theta, base.local_rope_theta, base.local_window, base.norm_eps) == (160000.0, 10000.0,
                                                                                               64, 1e-5)
    large = ClinicalModernBertConfig.from_preset("large")
    assert (large.hidden_size, large.intermediate_size, large.num_hidden_layers, large.num_attention_heads) == (
        1024, 2624, 28, 16)


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 30, "hidden_size=30 is not a multiple of num_attention_heads=4"),
    ("classifier_pooling", "max", "classifier_pooling='max'"),
    ("attention_backend", "flex", "attention_backend='flex'"),
    ("local_attention", 15, "local_attention=15"),
    ("mlp_dropout", 1.5, "mlp_dropout=1.5"),
    ("num_hidden_layers", 0, "num_hidden_layers=0"),
    ("pad_token_id", 500, "pad_token_id=500"),
    ("layer_types", ["full_attention", "global"], "layer_types has 2 entries"),
])
def test_bad_config_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tiny_config(**{field: value})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ClinicalModernBertConfig.from_preset("huge")


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = ClinicalModernBertForMaskedLM(tiny_config(attention_backend="sdpa")).train()
    ids = torch.randint(5, 128, (2, 30))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    labels[0, 0] = ids[0, 0]

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_dropout_only_in_training():
    torch.manual_seed(1)
    dropouts = dict(attention_dropout=0.3, embedding_dropout=0.3, mlp_dropout=0.3, classifier_dropout=0.3)
    noisy = ClinicalModernBertForSequenceClassification(tiny_config(num_labels=2, attention_backend="sdpa", **dropouts))
    clean = ClinicalModernBertForSequenceClassification(tiny_config(num_labels=2, attention_backend="sdpa"))
    clean.load_state_dict(noisy.state_dict())
    ids = torch.randint(5, 128, (3, 20))
    noisy.eval(), clean.eval()
    with torch.no_grad():
        assert torch.equal(noisy(input_ids=ids).logits, clean(input_ids=ids).logits)
        noisy.train()
        first, second = noisy(input_ids=ids).logits, noisy(input_ids=ids).logits
    assert not torch.allclose(first, second)  # dropout is really on in training


@pytest.mark.parametrize("problem_type, labels", [
    ("single_label_classification", torch.tensor([0, 2])),
    ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])),
    ("regression", torch.tensor([[0.5, 1.0, -1.0], [2.0, 0.0, 1.0]])),
])
def test_sequence_classification_problem_types(problem_type, labels):
    torch.manual_seed(2)
    model = ClinicalModernBertForSequenceClassification(tiny_config(num_labels=3, problem_type=problem_type)).eval()
    out = model(input_ids=torch.randint(5, 128, (2, 12)), labels=labels)
    reference = {
        "single_label_classification": lambda: torch.nn.functional.cross_entropy(out.logits, labels),
        "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels),
        "regression": lambda: torch.nn.functional.mse_loss(out.logits, labels),
    }[problem_type]()
    assert out.logits.shape == (2, 3)
    assert torch.allclose(out.loss, reference)


def test_head_output_shapes():
    torch.manual_seed(3)
    ids = torch.randint(5, 128, (2, 17))
    config = tiny_config(num_labels=4)
    assert ClinicalModernBertModel(config)(input_ids=ids).last_hidden_state.shape == (2, 17, 32)
    assert ClinicalModernBertForMaskedLM(config)(input_ids=ids).logits.shape == (2, 17, 128)
    assert ClinicalModernBertForTokenClassification(config)(input_ids=ids).logits.shape == (2, 17, 4)
    qa = ClinicalModernBertForQuestionAnswering(config)(
        input_ids=ids, start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([2, 40]))
    assert qa.start_logits.shape == qa.end_logits.shape == (2, 17) and torch.isfinite(qa.loss)
    mc = ClinicalModernBertForMultipleChoice(config)(input_ids=ids[:, None].expand(2, 3, 17),
                                                     labels=torch.tensor([0, 2]))
    assert mc.logits.shape == (2, 3) and torch.isfinite(mc.loss)
    hidden = ClinicalModernBertModel(config)(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hidden) == config.num_hidden_layers + 1 and hidden[0].shape == (2, 17, 32)


def test_too_long_input_is_a_clear_error():
    model = ClinicalModernBertModel(tiny_config(max_position_embeddings=64))
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_position_embeddings=64"):
        model(input_ids=torch.randint(5, 128, (1, 65)))
    with pytest.raises(ValueError, match="a document of 70 tokens exceeds max_position_embeddings=64"):
        model(input_ids=torch.randint(5, 128, (1, 100)), cu_seqlens=torch.tensor([0, 30, 100], dtype=torch.int32))


def test_wrong_mask_shape_and_empty_batch_are_clear_errors():
    model = ClinicalModernBertModel(tiny_config())
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 9\) but input_ids has shape \(2, 10\)"):
        model(input_ids=torch.randint(5, 128, (2, 10)), attention_mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match=r"empty batch: input_ids has shape \(0, 10\)"):
        model(input_ids=torch.zeros(0, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_all_padding_rows_have_defined_outputs(backend):
    torch.manual_seed(4)
    model = ClinicalModernBertForSequenceClassification(tiny_config(num_labels=2, attention_backend=backend)).eval()
    ids = torch.randint(5, 128, (3, 12))
    mask = torch.ones_like(ids)
    mask[1] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
        base = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = model(input_ids=ids[[0, 2]]).logits
        nothing = model.model(input_ids=ids, attention_mask=torch.zeros_like(ids)).last_hidden_state
    assert torch.isfinite(out).all() and torch.isfinite(nothing).all()
    assert torch.count_nonzero(base[1]) == 0 and torch.count_nonzero(nothing) == 0
    assert torch.allclose(out[[0, 2]], alone, atol=1e-5)


def test_flash_backend_on_cpu_is_a_clear_error():
    model = ClinicalModernBertModel(tiny_config(attention_backend="flash_attention_2"))
    with pytest.raises(ValueError, match="attention_backend='flash_attention_2' needs a CUDA device"):
        model(input_ids=torch.randint(5, 128, (1, 8)))


def test_chunked_mlm_loss_equals_one_piece_loss_and_gradients():
    torch.manual_seed(5)
    model = ClinicalModernBertForMaskedLM(tiny_config(attention_backend="sdpa", mlm_loss_chunk_size=7)).train()
    ids = torch.randint(5, 128, (2, 40))
    labels = torch.where(torch.rand(ids.shape) < 0.4, ids, -100)

    def run(chunk: int):
        model.config.mlm_loss_chunk_size = chunk
        model.zero_grad()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chunked, chunked_grads = run(7)  # ~32 masked tokens: several chunks and a ragged last one
    whole, whole_grads = run(0)
    assert chunked.logits is None and whole.logits.shape == (int((labels != -100).sum()), 128)
    assert torch.allclose(chunked.loss, whole.loss, atol=1e-6)
    for name in whole_grads:
        assert torch.allclose(chunked_grads[name], whole_grads[name], atol=1e-6), name
    with torch.no_grad():  # evaluation always returns the sparse logits
        assert model.eval()(input_ids=ids, labels=labels).logits is not None


def test_host_computed_masked_positions_give_the_same_loss_and_logits():
    """The collator's `masked_positions` replace the device-side search for labelled tokens (a sync); they must
    select exactly what the search selects, and they only fit packed batches."""
    torch.manual_seed(7)
    model = ClinicalModernBertForMaskedLM(tiny_config(attention_backend="sdpa", mlm_loss_chunk_size=0)).eval()
    ids = torch.randint(5, 128, (1, 40))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    packed = dict(input_ids=ids, labels=labels, cu_seqlens=torch.tensor([0, 25, 40], dtype=torch.int32), max_seqlen=25)
    positions = (labels.flatten() != -100).nonzero().squeeze(1)
    with torch.no_grad():
        searched = model(**packed)
        given = model(**packed, masked_positions=positions)
    assert torch.equal(searched.logits, given.logits) and torch.equal(searched.loss, given.loss)
    with pytest.raises(ValueError, match=r"masked_positions \(shape \(3,\).*packed batch"):
        model(input_ids=ids.view(2, 20), attention_mask=torch.ones(2, 20, dtype=torch.long),
              labels=labels.view(2, 20), masked_positions=positions[:3])


@pytest.mark.parametrize("fp32_out_matmul", [False, True])
def test_fused_linear_cross_entropy_matches_autograd_under_bf16_autocast(fp32_out_matmul, monkeypatch):
    """The fused loss makes the same bf16-matmul loss and gradients as autograd through F.linear + cross_entropy.

    `fp32_out_matmul`: the CUDA path, where cuBLAS writes fp32 (`addmm(..., out_dtype=float32)`, here a CPU stand-in):
    the first chunk overwrites the weight gradient and the bias gradient is a column of that matmul."""
    import modeling_clinical_modernbert as modeling
    from modeling_clinical_modernbert import _LinearCrossEntropy

    if fp32_out_matmul:
        calls = []

        def addmm(acc, a, b, *, beta=1.0, out_dtype, out):
            assert out is acc and out_dtype == torch.float32 and a.dtype == b.dtype == torch.bfloat16
            calls.append(beta)
            product = a.float() @ b.float()
            out.copy_(product if beta == 0 else acc + product)  # beta=0 never reads acc (torch.empty: garbage)
            return out

        monkeypatch.setattr(modeling, "_matmul_fp32_out", lambda a: True)
        monkeypatch.setattr(modeling.torch, "addmm", addmm)
    torch.manual_seed(7)
    hidden = torch.randn(37, 32, requires_grad=True)
    weight = torch.randn(128, 32, requires_grad=True)
    bias = torch.randn(128, requires_grad=True)
    labels = torch.randint(0, 128, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, reduction="sum")
    reference.backward(torch.tensor(0.5))
    expected = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _LinearCrossEntropy.apply(hidden, weight, bias, labels, 10, torch.bfloat16)  # 4 chunks, ragged
    fused.backward(torch.tensor(0.5))
    if fp32_out_matmul:
        assert calls == [0.0, 1.0, 1.0, 1.0]  # 4 chunks: the first overwrites
    assert fused.dtype == torch.float32
    assert torch.allclose(fused, reference, rtol=1e-3)
    for got, want in zip((hidden.grad, weight.grad, bias.grad), expected):
        assert got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_fused_loss_with_a_frozen_decoder_trains_the_encoder_only():
    torch.manual_seed(8)
    model = ClinicalModernBertForMaskedLM(tiny_config(attention_backend="sdpa", tie_word_embeddings=False)).train()
    model.decoder.requires_grad_(False)
    ids = torch.randint(5, 128, (2, 30))
    labels = torch.where(torch.rand(ids.shape) < 0.4, ids, -100)
    model(input_ids=ids, labels=labels).loss.backward()
    assert model.decoder.weight.grad is None and model.decoder.bias.grad is None
    assert model.model.layers[0].attn.Wqkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("residual_dtype, expected", [("autocast", torch.bfloat16), ("float32", torch.float32)])
def test_residual_stream_dtype_under_autocast(residual_dtype, expected):
    torch.manual_seed(9)
    model = ClinicalModernBertModel(tiny_config(attention_backend="sdpa", residual_dtype=residual_dtype)).eval()
    ids = torch.randint(5, 128, (2, 20))
    with torch.no_grad():
        reference = model(input_ids=ids).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, output_hidden_states=True)
    assert [h.dtype for h in out.hidden_states[1:]] == [expected] * model.config.num_hidden_layers
    assert (out.last_hidden_state - reference).abs().max() < 0.1  # bf16 rounding, not a different model
    with torch.no_grad():  # without autocast the option changes nothing
        assert torch.equal(model(input_ids=ids).last_hidden_state, reference)


def test_bad_residual_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="residual_dtype='bf16' must be one of"):
        tiny_config(residual_dtype="bf16")


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A broken compiler must never break the model: the plain blocks run and the outputs are unchanged."""
    import modeling_clinical_modernbert as modeling

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no working C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(modeling, "_compiled_functions", {})
    monkeypatch.setattr(modeling, "_compile_failed", set())
    torch.manual_seed(6)
    model = ClinicalModernBertModel(tiny_config(attention_backend="sdpa")).eval()
    ids = torch.randint(5, 128, (2, 20))
    with torch.no_grad():
        plain = model(input_ids=ids).last_hidden_state
        model.config.compile_layers = "on"
        fallen_back = model(input_ids=ids).last_hidden_state
    assert torch.equal(plain, fallen_back)
    assert modeling._compile_failed == {modeling._embedding_block, modeling._qkv_block, modeling._output_block}


def test_compile_auto_only_on_cuda():
    model = ClinicalModernBertModel(tiny_config())
    cpu = torch.device("cpu")
    assert not model.train()._use_compile(cpu) and not model.eval()._use_compile(cpu)
    model.config.compile_layers = "on"
    assert model._use_compile(cpu)


def trace_varlen_layer(**functorch_settings) -> dict[str, torch.fx.GraphModule]:
    """The forward and backward graphs torch's partitioner (the one inductor uses) makes for a compiled varlen layer
    in training, under these `torch._functorch.config` settings. Traced on CPU with torch's FA2 op: the graphs are
    captured, never run, and the CUDA-only kernel then refuses."""
    pytest.importorskip("torch.nn.attention.varlen")
    import torch._functorch.config as functorch_config
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    import modeling_clinical_modernbert as modeling

    graphs: dict[str, torch.fx.GraphModule] = {}

    def capture(kind):
        def compiler(graph, example_inputs):
            graphs[kind] = graph
            return graph.forward
        return compiler

    backend = aot_autograd(fw_compiler=capture("forward"), bw_compiler=capture("backward"),
                           partition_fn=min_cut_rematerialization_partition)
    config = tiny_config(hidden_size=256, intermediate_size=384, num_attention_heads=4, num_hidden_layers=2,
                         local_attention=128, max_position_embeddings=1024)
    layer = ClinicalModernBertForMaskedLM(config).model.layers[1]
    tokens, head_dim = 2048, 64
    hidden = torch.randn(tokens, 256, requires_grad=True)
    cos, sin = torch.randn(tokens, 1, head_dim), torch.randn(tokens, 1, head_dim)
    cu_seqlens = torch.tensor([0, 900, 1500, 1900, 2048], dtype=torch.int32)
    compiled = torch.compile(modeling._varlen_layer_block, backend=backend, dynamic=True)
    with functorch_config.patch(**functorch_settings), pytest.raises(NotImplementedError,
                                                                      match="flash_attention_forward"):
        compiled(layer, hidden, cos, sin, cu_seqlens, 900, "torch")
    return graphs


@pytest.mark.parametrize("keep", [True, False])
def test_backward_does_not_recompute_attention_under_a_memory_budget(keep):
    """The compiled layer's backward graph at activation_memory_budget=0.8 must not run the attention forward
    again; without our pass the planner does recompute it (the control case)."""
    import modeling_clinical_modernbert as modeling

    settings = {"activation_memory_budget": 0.8}
    if keep:
        settings["joint_custom_pass"] = modeling._keep_attention_outputs
    graphs = trace_varlen_layer(**settings)

    def calls(kind, op):
        return sum(node.target is op for node in graphs[kind].graph.nodes)

    attention = torch.ops.torch_attn._varlen_attn.default
    attention_backward = torch.ops.torch_attn._varlen_attn_backward.default
    assert calls("forward", attention) == 1 and calls("backward", attention_backward) == 1
    assert calls("backward", attention) == (0 if keep else 1)


def test_training_layer_does_not_save_the_whole_qkv_projection():
    """The attention op saves v for backward. As a view of the Wqkv output, v kept that whole output alive (the
    unrotated q and k too, 2/3 of it dead); the layer copies v out in training. With the default settings, no
    tensor the forward graph saves for backward may be a view of the (tokens, 3 x hidden) projection."""
    graphs = trace_varlen_layer()
    views = {torch.ops.aten.view.default, torch.ops.aten.unbind.int, torch.ops.aten.select.int,
             torch.ops.aten.slice.Tensor, torch.ops.aten._unsafe_view.default, torch.ops.aten.permute.default,
             torch.ops.aten.reshape.default, operator.getitem}

    def base(node):  # the node whose storage `node` views
        while node.op == "call_function" and node.target in views:
            node = node.args[0]
        return node

    forward = graphs["forward"]
    projections = [node for node in forward.graph.nodes if node.op == "call_function"
                   and node.target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
                   and node.meta["val"].shape[-1] == 3 * 256]
    assert len(projections) == 1  # Wqkv
    saved = [arg for arg in forward.graph.output_node().args[0] if isinstance(arg, torch.fx.Node)]
    attention = next(node for node in forward.graph.nodes if node.target is torch.ops.torch_attn._varlen_attn.default)
    assert base(attention.args[2]) is not projections[0]  # v
    assert all(base(node) is not projections[0] for node in saved), [node.name for node in saved]


@pytest.mark.parametrize("ours", [True, False])
def test_ddp_does_not_split_the_compiled_layers(ours, monkeypatch, tmp_path):
    """Under DDP, dynamo's DDPOptimizer splits each compiled graph at DDP's bucket boundaries (the first bucket is
    1 MB), so every layer would run as two graphs. Ours are compiled with `optimize_ddp` off. Real DDP (gloo, one
    process) around the model, layers compiled with the `aot_eager` backend; the control keeps torch's default and
    shows the split."""
    import gc

    import torch.distributed as dist
    from torch._dynamo.backends.distributed import DDPOptimizer
    from torch.nn.parallel import DistributedDataParallel

    import modeling_clinical_modernbert as modeling

    real_compile, real_settings, real_compile_fn = torch.compile, modeling._compile_settings, DDPOptimizer.compile_fn
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend="aot_eager", **kwargs))
    monkeypatch.setattr(modeling, "_compiled_functions", {})
    monkeypatch.setattr(modeling, "_compile_failed", set())
    if not ours:
        def torch_defaults(budget):
            return [(module, {k: v for k, v in values.items() if k != "optimize_ddp"})
                    for module, values in real_settings(budget)]

        monkeypatch.setattr(modeling, "_compile_settings", torch_defaults)
    buckets: list[int] = []

    def compile_fn(self, graph, example_inputs):
        compiled = real_compile_fn(self, graph, example_inputs)
        buckets.append(len(self.buckets))
        return compiled

    monkeypatch.setattr(DDPOptimizer, "compile_fn", compile_fn)
    torch._dynamo.reset()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    model = None
    try:
        torch.manual_seed(0)
        # MLP output projection 1024 x 256 fp32 = 1 MB: past DDP's first bucket, as in every real geometry.
        config = tiny_config(hidden_size=256, intermediate_size=2048, compile_layers="on")
        model = DistributedDataParallel(ClinicalModernBertForMaskedLM(config).train())
        ids = torch.randint(5, 128, (2, 24))
        model(input_ids=ids, labels=ids).loss.backward()
        all_have_grads = all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        # DDP's reducer holds the process group: free it first, or gloo's destructor can hang joining its threads.
        del model
        gc.collect()
        dist.destroy_process_group()
        torch._dynamo.reset()
    assert all_have_grads
    if ours:
        assert buckets == []  # DDPOptimizer never ran
    else:
        assert buckets and max(buckets) > 1


def test_split_matmuls_equal_one_matmul_and_keep_wrapped_layers():
    """Compiled layers run Wi as one matmul per half when training: same outputs and gradients as one matmul."""
    import modeling_clinical_modernbert as modeling

    torch.manual_seed(12)
    mlp = modeling.ClinicalModernBertMLP(tiny_config(mlp_bias=True))
    x = torch.randn(7, mlp.Wi.in_features)
    results = []
    for split in (False, True):
        mlp.zero_grad()
        out = mlp(x, split_matmuls=split)
        out.pow(2).sum().backward()
        results.append((out, mlp.Wi.weight.grad.clone(), mlp.Wi.bias.grad.clone()))
    for one, split in zip(*results):
        torch.testing.assert_close(split, one, rtol=1e-5, atol=1e-6)

    class Adapter(torch.nn.Linear):  # stands in for PEFT's LoRA layer or a quantised Linear
        def forward(self, hidden):
            return super().forward(hidden) + 1.0

    wrapped = Adapter(4, 6)
    parts = modeling.split_linear(wrapped, torch.zeros(2, 4), 3)
    assert len(parts) == 3 and all(torch.equal(p, wrapped.bias.reshape(3, 2)[i].expand(2, 2) + 1.0)
                                   for i, p in enumerate(parts))


def test_output_rows_return_those_final_states_and_exclude_all_hidden_states():
    torch.manual_seed(13)
    model = ClinicalModernBertModel(tiny_config(attention_backend="sdpa")).eval()
    ids = torch.randint(5, 128, (1, 30))
    cu_seqlens = torch.tensor([0, 12, 30], dtype=torch.int32)
    rows = torch.tensor([1, 11, 12, 29])
    with torch.no_grad():
        every, _, _ = model.forward_packed(ids, cu_seqlens=cu_seqlens)
        selected, _, _ = model.forward_packed(ids, cu_seqlens=cu_seqlens, output_rows=rows)
    torch.testing.assert_close(selected, every[rows])
    with pytest.raises(ValueError, match="output_rows selects the last layer's tokens"):
        model.forward_packed(ids, cu_seqlens=cu_seqlens, output_rows=rows, output_hidden_states=True)


def test_pad_to_static_shapes_rounds_every_dimension_and_keeps_the_real_batch_first():
    """config.cuda_graphs pads a packed batch to few shapes: tokens (one [PAD] document), documents (empty ones),
    max_seqlen and output rows (the last row repeated, so they stay ascending)."""
    from modeling_clinical_modernbert import pad_to_static_shapes

    ids = torch.arange(5, 35)
    positions = torch.cat([torch.arange(12), torch.arange(18)])
    cu_seqlens = torch.tensor([0, 12, 30], dtype=torch.int32)
    rows = torch.tensor([1, 11, 12, 29])
    token_ids, embeds, position_ids, cu, max_seqlen, padded_rows = pad_to_static_shapes(
        ids, None, positions, cu_seqlens, 18, rows, pad_token_id=0)
    assert embeds is None and token_ids.shape == (1024,) and position_ids.shape == (1024,)
    assert torch.equal(token_ids[:30], ids) and not token_ids[30:].any()
    assert torch.equal(position_ids[:30], positions) and torch.equal(position_ids[30:], torch.arange(994))
    assert cu.shape == (65,) and cu.dtype == torch.int32  # 2 documents + the [PAD] one -> 64 documents
    assert cu[:4].tolist() == [0, 12, 30, 1024] and bool((cu[3:] == 1024).all())
    assert max_seqlen == 1024
    assert padded_rows.shape == (1024,) and torch.equal(padded_rows[:4], rows) and bool((padded_rows[4:] == 29).all())

    # Already a multiple of 1,024 tokens: no [PAD] document; no rows: the last token fills them.
    embeds = torch.randn(1024, 8)
    _, same, position_ids, cu, max_seqlen, padded_rows = pad_to_static_shapes(
        None, embeds, torch.arange(1024), torch.tensor([0, 1024], dtype=torch.int32), 1024,
        torch.zeros(0, dtype=torch.long), pad_token_id=0)
    assert torch.equal(same, embeds) and position_ids.shape == (1024,) and max_seqlen == 1024
    assert cu.shape == (65,) and bool((cu[1:] == 1024).all())
    assert padded_rows.tolist() == [1023] * 1024

    # 65 documents -> 128 (powers of two keep the shapes few)
    cu_seqlens = torch.arange(66, dtype=torch.int32) * 16
    _, _, _, cu, _, _ = pad_to_static_shapes(torch.zeros(1040, dtype=torch.long), None, torch.zeros(1040), cu_seqlens,
                                             16, None, pad_token_id=0)
    assert cu.shape == (129,) and cu[65].item() == 1040 and cu[66].item() == 2048 and bool((cu[66:] == 2048).all())


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_a_batch_padded_to_static_shapes_gives_the_same_states_for_its_real_tokens(backend):
    """The padded batch (a [PAD] document, empty documents, repeated rows) leaves the real tokens' states alone."""
    from modeling_clinical_modernbert import pad_to_static_shapes

    torch.manual_seed(14)
    model = ClinicalModernBertModel(tiny_config(attention_backend=backend, max_position_embeddings=1024)).eval()
    ids = torch.randint(5, 128, (30,))
    cu_seqlens = torch.tensor([0, 12, 30], dtype=torch.int32)
    positions = torch.cat([torch.arange(12), torch.arange(18)])
    rows = torch.tensor([1, 11, 12, 29])
    padded_ids, _, padded_positions, cu, max_seqlen, padded_rows = pad_to_static_shapes(
        ids, None, positions, cu_seqlens, 18, rows, pad_token_id=model.config.pad_token_id)
    with torch.no_grad():
        every, _, _ = model.forward_packed(ids[None], cu_seqlens=cu_seqlens, max_seqlen=18)
        padded, _, _ = model.forward_packed(padded_ids[None], position_ids=padded_positions[None], cu_seqlens=cu,
                                            max_seqlen=max_seqlen)
        selected, _, _ = model.forward_packed(padded_ids[None], position_ids=padded_positions[None],
                                              cu_seqlens=cu, max_seqlen=max_seqlen, output_rows=padded_rows)
    torch.testing.assert_close(padded[:30], every)
    torch.testing.assert_close(selected[:4], every[rows])
