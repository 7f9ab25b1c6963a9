"""The benchmark harness: FLOP counts by hand, identical padded/packed batches, and a CPU smoke run."""

from __future__ import annotations

import gzip
import json
import time

import pytest
import torch

from bench import bench, timeline
from bench.data import build_batch, padding_fraction, sample_document_lengths
from bench.flops import (
    attention_macs,
    attention_pairs,
    default_peak_tflops,
    forward_flops,
    head_macs_per_token,
    inference_flops,
    linear_macs_per_token,
    training_flops,
)
from configuration_clinical_modernbert import ClinicalModernBertConfig
from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM, ClinicalModernBertModel
from train.profiling import load_trace, step_timelines


def tiny() -> ClinicalModernBertConfig:
    """hidden 32, intermediate 48, 3 layers (global, local, local), vocab 128, local_attention 16 (half window 8)."""
    return ClinicalModernBertConfig.from_preset("tiny")


# --------------------------------------------------------------------------------------------------------------------
# FLOP counter
# --------------------------------------------------------------------------------------------------------------------


def test_attention_pairs_by_hand():
    assert attention_pairs(5, None) == 25
    assert attention_pairs(20, None) == 400
    assert attention_pairs(5, 8) == 25  # the whole document fits in the window
    # 20 tokens, half window 8: 20 self pairs + 2 * (19 + 18 + ... + 12) = 20 + 2 * 124
    assert attention_pairs(20, 8) == 268
    assert attention_pairs(20, 8) == sum(1 for i in range(20) for j in range(20) if abs(i - j) <= 8)
    # ModernBERT's local layers: half window 64, so an inner token sees exactly 129 keys
    assert attention_pairs(8192, 64) == 8192 + 2 * (64 * 8192 - 64 * 65 // 2) == 1_052_608
    assert attention_pairs(8192, 64) <= 129 * 8192
    assert attention_pairs(0, 64) == 0


def test_linear_and_head_macs_by_hand():
    config = tiny()
    # Wqkv 32x96 + Wo 32x32 + Wi 32x96 + MLP Wo 48x32 = 3072 + 1024 + 3072 + 1536 = 8704 per layer, 3 layers
    assert linear_macs_per_token(config) == 26_112
    assert head_macs_per_token(config) == 32 * 32 + 32 * 128 == 5120
    # ModernBERT-base: 22 * (4 * 768^2 + 3 * 768 * 1152) = 110,297,088 (its ~110M non-embedding parameters)
    assert linear_macs_per_token(ClinicalModernBertConfig.from_preset("base")) == 110_297_088


def test_linear_macs_equal_the_models_linear_weights():
    config = tiny()
    model = ClinicalModernBertModel(config)
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear_macs_per_token(config) == linear_weights


def test_step_flops_by_hand():
    config = tiny()
    lengths, masked = [5, 20], 3
    # global layer: 2 * 32 * (25 + 400) = 27,200; two local layers: 2 * 2 * 32 * (25 + 268) = 37,504
    assert attention_macs(config, lengths) == 64_704
    forward = forward_flops(config, lengths, head_tokens=masked)
    assert forward.linear == 2 * 26_112 * 25 == 1_305_600
    assert forward.attention == 2 * 64_704 == 129_408
    assert forward.head == 2 * 5120 * 3 == 30_720
    assert forward.total == 1_465_728
    train = training_flops(config, lengths, masked)
    assert train.to_dict() == {"linear": 3_916_800, "attention": 388_224, "head": 92_160, "total": 4_397_184}
    infer = inference_flops(config, lengths)
    assert (infer.head, infer.total) == (0, 1_435_008)


def test_default_peak_by_device_name():
    assert default_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert default_peak_tflops("NVIDIA H200") == 989.0
    assert default_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert default_peak_tflops("Some Unknown GPU") is None


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


def test_packed_and_padded_batches_hold_the_same_tokens():
    batch = build_batch([3, 5, 2], seq_len=5, vocab_size=128, pad_token_id=0, mask_token_id=3, mask_rate=0.3, seed=0)
    assert batch.cu_seqlens.tolist() == [0, 3, 8, 10]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == 5
    assert batch.packed_position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    real = batch.attention_mask.bool()
    assert torch.equal(batch.input_ids[real], batch.packed_input_ids[0])
    assert torch.equal(batch.labels[real], batch.packed_labels[0])
    assert (batch.input_ids[~real] == 0).all() and (batch.labels[~real] == -100).all()
    assert (batch.real_tokens, batch.padded_tokens) == (10, 15)
    assert batch.padding_fraction == pytest.approx(1 / 3)
    # round(0.3 * 10) = 3 masked positions: labelled with an ordinary id, input replaced by [MASK]
    masked = batch.packed_labels[0] != -100
    assert batch.masked_tokens == 3 and int(masked.sum()) == 3
    assert (batch.packed_input_ids[0][masked] == 3).all()
    assert (batch.packed_labels[0][masked] >= 5).all()
    assert (batch.packed_input_ids[0][~masked] >= 5).all()


def test_batch_is_deterministic_and_inputs_kwargs():
    first = build_batch([4, 2], 4, 64, pad_token_id=0, mask_token_id=None, mask_rate=0.5, seed=7)
    again = build_batch([4, 2], 4, 64, pad_token_id=0, mask_token_id=None, mask_rate=0.5, seed=7)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.labels, again.labels)
    # without a mask token the inputs keep their ids: labels equal inputs where labelled
    labelled = first.labels != -100
    assert torch.equal(first.labels[labelled], first.input_ids[labelled])
    packed = first.packed_inputs("cpu", with_labels=True)
    assert set(packed) == {"input_ids", "position_ids", "cu_seqlens", "max_seqlen", "labels", "masked_positions"}
    assert torch.equal(packed["labels"].flatten()[packed["masked_positions"]], first.labels[labelled])
    assert packed["max_seqlen"] == 4
    assert set(first.padded_inputs("cpu", with_labels=False)) == {"input_ids", "attention_mask"}


def test_build_batch_rejects_bad_lengths():
    with pytest.raises(ValueError, match="document 1 has length 9"):
        build_batch([3, 9], seq_len=8, vocab_size=64, pad_token_id=0, mask_token_id=3)
    with pytest.raises(ValueError, match="lengths is empty"):
        build_batch([], seq_len=8, vocab_size=64, pad_token_id=0, mask_token_id=3)


def test_sampled_lengths_hit_the_padding_target_with_a_mix():
    lengths = sample_document_lengths(32, 1024, 0.25, seed=0)
    assert len(lengths) == 32
    assert abs(padding_fraction(lengths, 1024) - 0.25) < 0.002
    assert min(lengths) >= 16 and max(lengths) <= 1024
    assert any(n < 256 for n in lengths) and any(n == 1024 for n in lengths)  # short notes and truncated long ones
    assert lengths == sample_document_lengths(32, 1024, 0.25, seed=0)
    assert lengths != sample_document_lengths(32, 1024, 0.25, seed=1)
    with pytest.raises(ValueError, match="padding=0.99 is not reachable"):
        sample_document_lengths(4, 512, 0.99)


def test_registered_shapes_keep_their_promises():
    for device_shapes in bench.SHAPES.values():
        for shape in device_shapes.values():
            lengths = sample_document_lengths(shape.rows, shape.seq_len, shape.padding, seed=0)
            assert abs(padding_fraction(lengths, shape.seq_len) - shape.padding) < 0.01
    big = bench.SHAPES["cuda"]["train-8192-64k"]
    assert sum(sample_document_lengths(big.rows, big.seq_len, big.padding, seed=0)) >= 65_536


# --------------------------------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """The dev machine is shared: one thread avoids OpenMP threads waiting on busy cores (and keeps tests fast)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(**overrides) -> bench.RunSettings:
    values = dict(device=torch.device("cpu"), dtype=torch.float32, warmup=1, steps=1, peak_tflops=None,
                  ours_overrides={})
    values.update(overrides)
    return bench.RunSettings(**values)


SMOKE_SHAPES = {
    "train-tiny": bench.ShapeSpec("train", 3, 64, 0.25, "3 x 64"),
    "infer-tiny": bench.ShapeSpec("infer", 3, 64, 0.25, "3 x 64"),
}


def test_cpu_smoke_run_identical_weights_and_batches(one_thread):
    models = ["transformers-sdpa", "transformers-sdpa-sparse", "ours-sdpa", "ours-eager"]
    seen = []
    results = bench.run(["tiny"], SMOKE_SHAPES, models, _settings(peak_tflops=1.0), on_result=seen.append)
    assert len(results) == 4 + 3  # the sparse variant is training-only
    assert len(seen) == 7
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    train = {r["model"]: r for r in results if r["shape"] == "train-tiny"}
    # Same weights, same documents, same masked positions, fp32: the first losses agree (dense or sparse head).
    reference = train["transformers-sdpa"]["first_loss"]
    for name in ("transformers-sdpa-sparse", "ours-sdpa", "ours-eager"):
        assert train[name]["first_loss"] == pytest.approx(reference, rel=1e-5), name
    lengths = sample_document_lengths(3, 64, 0.25, seed=0)
    for r in results:
        assert r["real_tokens"] == sum(lengths)
        assert r["tokens_per_s"] == pytest.approx(r["real_tokens"] / r["median_step_s"])
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 1.0)
    masked = train["ours-sdpa"]["masked_tokens"]
    assert masked == round(0.3 * sum(lengths))
    assert train["ours-sdpa"]["useful_flops"] == training_flops(tiny(), lengths, masked).to_dict()
    assert train["transformers-sdpa"]["speedup_vs_transformers_sdpa"] == pytest.approx(1.0)
    assert train["ours-sdpa"]["model_config"]["attention_backend"] == "sdpa"
    assert train["transformers-sdpa"]["model_config"]["sparse_prediction"] is False
    assert train["transformers-sdpa-sparse"]["model_config"]["sparse_prediction"] is True
    table = bench.format_table(results)
    assert table.splitlines()[0].split()[:3] == ["shape", "geometry", "model"]
    assert len(table.splitlines()) == 2 + 7


def test_failures_are_recorded_not_raised(one_thread):
    config = tiny()
    weights = bench.shared_weights(config, torch.device("cpu"), seed=0)
    shape = SMOKE_SHAPES["train-tiny"]
    batch = build_batch(sample_document_lengths(3, 64, 0.25), 64, 128, 0, 3)
    broken = bench.ModelSpec("ours", "a backend that does not exist", "no-such-backend")
    result = bench.run_config("broken", broken, "tiny", config, weights, "train-tiny", shape, batch, _settings())
    assert result["status"] == "error"
    assert "no-such-backend" in result["error"]
    assert bench._is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert bench._is_oom(RuntimeError("CUDA error: out of memory"))
    assert not bench._is_oom(ValueError("shape mismatch"))
    oom_row = {**result, "status": "OOM", "model": "big"}
    assert "OOM" in bench.format_table([oom_row]).splitlines()[-1]


def test_time_budget_skips_remaining_configurations(one_thread):
    results = bench.run(["tiny"], SMOKE_SHAPES, ["transformers-sdpa"], _settings(), deadline=time.monotonic() - 1)
    assert [r["status"] for r in results] == ["skipped", "skipped"]


def test_config_overrides_go_through_one_builder():
    model = bench.build_ours(tiny(), "train", {"attention_backend": "eager"}, torch.device("cpu"))
    assert type(model).__name__ == "ClinicalModernBertForMaskedLM"
    assert model.config.attention_backend == "eager"
    with pytest.raises(ValueError, match="no field 'atention_backend'"):
        bench.with_overrides(tiny(), {"atention_backend": "eager"})
    with pytest.raises(ValueError, match="attention_backend='nope'"):
        bench.with_overrides(tiny(), {"attention_backend": "nope"})


def test_cli_writes_json_and_prints_the_table_last(tmp_path, capsys, one_thread):
    out = tmp_path / "speed.json"
    bench.main(["--device", "cpu", "--quick", "--threads", "1", "--geometries", "tiny", "--only", "infer-512",
                "--models", "transformers-sdpa,ours-sdpa", "--ours-config", "sparse_pred_ignore_index=-100",
                "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] is True
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    assert "--only infer-512" in report["command"]
    assert report["settings"]["ours_overrides"] == {"sparse_pred_ignore_index": -100}
    assert [r["model"] for r in report["results"]] == ["transformers-sdpa", "ours-sdpa"]
    assert all(r["status"] == "ok" and r["step_times_s"] for r in report["results"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].split()[:3] == ["infer-512", "tiny", "ours-sdpa"]
    assert printed[-2].split()[:3] == ["infer-512", "tiny", "transformers-sdpa"]


def test_local_attention_block_mask_visits_exactly_the_needed_blocks():
    """The FlexAttention block mask of bench/local_attention.py: the blocks it visits are exactly those holding a
    pair within +-64 tokens and one document, and flex's output equals dense masked attention."""
    from bench.local_attention import check_on_cpu

    check_on_cpu()


@pytest.mark.gpu
def test_free_memory_gives_back_what_cuda_graphs_held():
    """A model trained with `cuda_graphs=true` leaves its graphs' memory pool and its parameters behind in torch's
    graph trees after it is deleted; the harness frees them before the next configuration (which otherwise ran out
    of memory: transformers at train-8192-x4 after two graph models)."""
    device = torch.device("cuda")
    lengths = sample_document_lengths(4, 256, 0.25, seed=0)

    def train_and_delete(**overrides) -> int:
        """Three training steps (with graphs: warm-up, recording, replay); returns the parameters' bytes."""
        config = ClinicalModernBertConfig.from_preset(
            "tiny", attention_backend="flash_attention_2", hidden_size=256, intermediate_size=384,
            num_attention_heads=4, local_attention=128, **overrides)
        model = ClinicalModernBertForMaskedLM(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), fused=True)
        batch = build_batch(lengths, 256, config.vocab_size, config.pad_token_id, config.mask_token_id, seed=0)
        inputs = batch.packed_inputs("cuda", with_labels=True)
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return sum(p.numel() * p.element_size() for p in model.parameters())

    train_and_delete(compile_layers="off")  # what stays for the process (cuBLAS workspaces, ...) is the baseline
    bench.free_memory(device)
    before = torch.cuda.memory_allocated()
    parameters = train_and_delete(compile_layers="on", cuda_graphs=True)
    bench.free_memory(device, cuda_graphs=True)
    assert torch.cuda.memory_allocated() - before < parameters / 10


def _trace_events(step_ranges: list[tuple[float, float]]) -> list[dict]:
    """A torch.profiler Chrome trace by hand: launches (CPU) and their device events, times in us."""
    def launch(name, ts, dur, correlation):
        return {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur,
                "args": {"correlation": correlation}}

    def device(cat, name, ts, dur, correlation):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"correlation": correlation}}

    events = [{"ph": "X", "cat": "user_annotation", "name": "train_step", "ts": start, "dur": end - start}
              for start, end in step_ranges]
    events += [
        launch("cudaLaunchKernel", 10, 5, 1), device("kernel", "a", 16, 10, 1),  # 16-26
        launch("cudaGraphLaunch", 20, 5, 2), device("kernel", "b", 26, 20, 2),  # 26-46, no gap
        launch("cudaLaunchKernel", 30, 5, 6), device("kernel", "c", 30, 10, 6),  # overlaps b: busy counts once
        launch("cudaLaunchKernel", 60, 5, 3), device("kernel", "d", 66, 10, 3),  # idle 46-66, launched at 65: 19 CPU
        launch("cudaMemcpyAsync", 70, 2, 4), device("gpu_memcpy", "Memcpy DtoD", 80, 4, 4),  # idle 4, the device's
        launch("cudaMemsetAsync", 85, 1, 5), device("gpu_memset", "Memset", 90, 2, 5),  # idle 6, 2 waiting for CPU
        launch("cudaLaunchKernel", 500, 5, 7), device("kernel", "outside", 600, 5, 7),  # in no step
    ]
    return events


def test_timeline_splits_idle_time_into_waiting_for_the_cpu_and_the_devices_own(tmp_path, capsys):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump({"traceEvents": _trace_events([(0, 100)])}, handle)
    (step,) = step_timelines(load_trace(path))
    assert step.device_events == 6  # the kernel launched after the step is not in it
    assert step.span_ms == pytest.approx(0.076)  # 16 .. 92
    assert step.busy_ms == pytest.approx(0.046)  # 10 + 20 + 10 + 4 + 2 (c overlaps b)
    assert step.idle_ms == pytest.approx(0.030)  # 20 + 4 + 6
    assert step.idle_waiting_for_cpu_ms == pytest.approx(0.021)  # 19 + 2
    assert (step.copies, step.copies_ms, step.memsets, step.memsets_ms) == (1, pytest.approx(0.004), 1,
                                                                            pytest.approx(0.002))
    assert step.cpu_lead_ms == pytest.approx(0.005)  # the memset ran 5 us after its launch began
    timeline.main([str(path)])  # the command prints the table
    assert capsys.readouterr().out.splitlines()[1].split()[:5] == ["0", "0.08", "0.05", "0.03", "0.02"]


def test_timeline_steps_by_boundary_ranges_and_clear_errors(tmp_path):
    events = _trace_events([])
    events += [{"ph": "X", "cat": "user_annotation", "name": "Optimizer.zero_grad#AdamW.zero_grad", "ts": ts,
                "dur": 1} for ts in (0, 62, 1000)]
    first, second = step_timelines(events, boundary="Optimizer.zero_grad#AdamW.zero_grad")
    assert (first.device_events, second.device_events) == (4, 3)  # launched in 1..63 and 63..1001
    with pytest.raises(ValueError, match="record_function\\('train_step'\\)"):
        step_timelines(events)
    path = tmp_path / "not_a_trace.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="not_a_trace.json: no 'traceEvents'"):
        load_trace(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not_a_trace.json: not JSON"):
        load_trace(path)
