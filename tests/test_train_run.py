"""End-to-end tests of the Trainer entry point on a tiny synthetic corpus (seconds each, CPU).

- the CLI trains, evaluates and writes a complete Hub model folder (no checkpoints inside), which loads back;
- a run resumed from a mid-run checkpoint continues the step count and reproduces the uninterrupted losses
  (data order and masks, with the decaying masking rate);
- ``init_from`` a transformers-native ModernBERT folder loads every weight unchanged;
- the loss normalisation and the evaluation metrics are exact on hand-made logits.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import yaml

from train.config import ConfigError, load_config
from train.demo_check import icd10cm_descriptions, make_masked_examples, unigram_top_words
from train.model_card import ModelCardInfo, card_metadata
from train.plots import loss_series
from train.profiling import step_windows
from train.run import build_model, compute_mlm_metrics, last_complete_checkpoint, masked_logits_and_targets, run
from train.tokenizer import TokenizerUnavailableError, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTIONS = [
    "Fracture of left femur, initial encounter", "Fracture of right femur, subsequent encounter",
    "Type 2 diabetes mellitus without complications", "Type 1 diabetes mellitus with kidney complications",
    "Acute myocardial infarction of anterior wall", "Chronic kidney disease, stage 3",
    "Pneumonia of left lower lobe", "Pneumonia of right upper lobe", "Acute kidney failure with tubular necrosis",
]
# A tiny model and short bins: every run below takes a few seconds on a CPU.
TINY = {
    "max_seq_len": "64", "tokenizer_vocab_size": "400", "per_device_train_batch_size": "2",
    "per_device_eval_batch_size": "8", "warmup_steps": "1", "logging_steps": "1", "demo_check_examples": "20",
    "model_overrides.hidden_size": "32", "model_overrides.intermediate_size": "48",
    "model_overrides.num_hidden_layers": "2", "model_overrides.local_attention": "16",
    "model_overrides.max_position_embeddings": "64",
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A synthetic corpus folder in the sample corpus' layout: ICD-10-CM code documents plus free text."""
    rng = random.Random(0)

    def rows(n: int, prefix: str) -> list[dict]:
        out = []
        for i in range(n):
            out.append({"text": f"ICD-10-CM code X{i}: {rng.choice(DESCRIPTIONS)}\nChapter 1: Diseases.",
                        "source": "icd10cm", "doc_id": f"icd10cm:{prefix}{i}"})
            text = " ".join(rng.choice(DESCRIPTIONS) for _ in range(rng.randint(1, 12)))
            out.append({"text": text, "source": "pubmed", "doc_id": f"pubmed:{prefix}{i}"})
        return out

    path = tmp_path_factory.mktemp("corpus") / "corpus"
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows(150, "t")),
                         validation=datasets.Dataset.from_list(rows(10, "v"))).save_to_disk(str(path))
    return path


def test_cli_writes_a_complete_hub_folder(corpus_dir, tmp_path):
    out = tmp_path / "model"
    args = ["--preset", "demo", "--corpus", str(corpus_dir), "--cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2"]
    args += [item for key, value in TINY.items() for item in (f"--{key}", value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fill-mask top-5 accuracy on" in proc.stdout
    assert "eval: eval_loss=" in proc.stdout

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([
        "README.md", "config.json", "configuration_clinical_modernbert.py", "loss_curve.png", "model.safetensors",
        "modeling_clinical_modernbert.py", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
        "training_summary.json",
    ])
    checkpoints = sorted(p.name for p in (tmp_path / "model-checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]

    from publish.push import check_model_folder

    assert check_model_folder(out).ok, check_model_folder(out).problems()  # the push guard accepts the folder

    card = (out / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata == {
        "datasets": ["icd10cm", "pubmed"], "license": "apache-2.0", "language": ["en"],
        "library_name": "transformers", "pipeline_tag": "fill-mask",
        "tags": ["modernbert", "clinical", "biomedical", "fill-mask"],
    }
    assert "| Optimizer steps | 4 |" in card and "![MLM loss](loss_curve.png)" in card
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 4
    metrics = summary["metrics"]
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-9)
    assert summary["demo_check"]["n_examples"] == 10  # all 10 held-out ICD-10-CM documents (20 were allowed)
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForMaskedLM"] == (
        "modeling_clinical_modernbert.ClinicalModernBertForMaskedLM"
    )

    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True)
    tokenizer = load_tokenizer(str(out))
    assert model.config.vocab_size == len(tokenizer) == 448  # 400 ids (special included) + 48 [unused] = 7 x 64
    with torch.no_grad():
        logits = model(**tokenizer(["Fracture of [MASK] femur"], return_tensors="pt")).logits
    assert logits.shape[-1] == 448


def _config(corpus_dir: Path, tmp_path: Path, **extra: str):
    overrides = {**TINY, "corpus": str(corpus_dir), "cache_dir": str(tmp_path / "cache"),
                 "output_dir": str(tmp_path / "model"), "demo_check": "false", "eval_steps": "100", **extra}
    return load_config("demo", overrides)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resume_continues_the_step_count_and_reproduces_losses(corpus_dir, tmp_path):
    cfg = _config(corpus_dir, tmp_path, max_steps="6", save_steps="3", save_total_limit="5")
    first = run(cfg)
    assert first.global_step == 6
    history = json.loads((tmp_path / "model-checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    losses = {entry["step"]: entry["loss"] for entry in history["log_history"] if "loss" in entry}

    # Simulate a crash after step 3: drop the later checkpoint and the output folder, run again.
    shutil.rmtree(tmp_path / "model-checkpoints" / "checkpoint-6")
    shutil.rmtree(tmp_path / "model")
    # Mark checkpoint-3's history, to tell a resumed run (keeps the mark) from a fresh one (same losses, no mark).
    state_path = tmp_path / "model-checkpoints" / "checkpoint-3" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    next(entry for entry in state["log_history"] if entry.get("step") == 2 and "loss" in entry)["loss"] = 123.0
    state_path.write_text(json.dumps(state))
    resumed = run(cfg)
    assert resumed.resumed_from == str(tmp_path / "model-checkpoints" / "checkpoint-3")
    assert resumed.global_step == 6
    history = json.loads((tmp_path / "model-checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    resumed_losses = {entry["step"]: entry["loss"] for entry in history["log_history"] if "loss" in entry}
    assert sorted(resumed_losses) == [1, 2, 3, 4, 5, 6]  # steps 1-3 restored from checkpoint-3, 4-6 trained again
    assert resumed_losses[2] == 123.0
    # Same data order and, although the masking rate decays (cosine), the same masks: the same losses.
    for step in (4, 5, 6):
        assert resumed_losses[step] == pytest.approx(losses[step], rel=1e-6)


def test_a_class_swapped_model_is_saved_as_its_own_class(tmp_path, tiny_tokenizer):
    """FSDP2 swaps the model's class for a generated subclass from torch's sources; the saved folder must still
    hold only our remote code, and the same weights."""
    from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM
    from train.run import plain_model

    model = build_model(load_config("demo", {**TINY, "init_from": "none"}), tiny_tokenizer)
    swapped_class = type("FSDPClinicalModernBertForMaskedLM", (ClinicalModernBertForMaskedLM,), {})
    swapped_class.__module__ = "torch.distributed.fsdp._fully_shard._fsdp_state"
    model.__class__ = swapped_class
    state_dict = {key: value.clone() for key, value in model.state_dict().items()}
    clean = plain_model(model, state_dict)
    assert type(clean) is ClinicalModernBertForMaskedLM
    assert clean.decoder.weight is clean.model.embeddings.tok_embeddings.weight  # still tied
    for key, value in clean.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    clean.save_pretrained(tmp_path, state_dict=state_dict)
    assert sorted(p.name for p in tmp_path.glob("*.py")) == [
        "configuration_clinical_modernbert.py", "modeling_clinical_modernbert.py"]
    with pytest.raises(RuntimeError, match="missing .*model.final_norm.weight"):
        plain_model(model, {k: v for k, v in state_dict.items() if k != "model.final_norm.weight"})


def test_profile_steps_write_a_trace_and_a_summary(corpus_dir, tmp_path):
    result = run(_config(corpus_dir, tmp_path, max_steps="4", profile_steps="2-3", eval_on_start="false"))
    profile = tmp_path / "model-checkpoints" / "profile"
    trace = json.loads((profile / "trace.json").read_text())
    assert any(event.get("name") == "aten::mm" for event in trace["traceEvents"])  # the step's matmuls were seen
    windows = step_windows(trace["traceEvents"])  # each profiled step is a range, for bench/timeline.py
    assert len(windows) == 2 and windows[0][1] <= windows[1][0]
    summary = json.loads((tmp_path / "model" / "training_summary.json").read_text())["profile"]
    assert summary["steps"] == 2 and summary["wall_ms_per_step"] > 0
    assert "Self CPU" in (profile / "summary.txt").read_text()
    assert not (result.output_dir / "profile").exists()  # never inside the Hub folder


@pytest.mark.gpu
def test_profile_steps_on_cuda_split_the_gpu_idle_time(corpus_dir, tmp_path):
    """On CUDA the profile also times the GPU's idle time per step and how much of it waited for the CPU."""
    run(_config(corpus_dir, tmp_path, max_steps="4", profile_steps="2-3", eval_on_start="false"))
    summary = json.loads((tmp_path / "model" / "training_summary.json").read_text())["profile"]
    assert summary["gpu_kernel_ms_per_step"] > 0
    assert 0 <= summary["gpu_idle_waiting_for_cpu_ms_per_step"] <= summary["gpu_idle_ms_per_step"]
    assert "step timelines" in (tmp_path / "model-checkpoints" / "profile" / "summary.txt").read_text()


@pytest.mark.parametrize("value", ["3", "0-2", "5-4", "a-b"])
def test_bad_profile_steps_are_clear_errors(value):
    with pytest.raises(ConfigError, match=f"profile_steps='{value}' must be 'START-END'"):
        load_config("demo", {"profile_steps": value})


def test_init_from_native_modernbert_loads_every_weight(tmp_path, tiny_tokenizer):
    import transformers

    native_config = transformers.ModernBertConfig(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=512, local_attention=16, pad_token_id=0, bos_token_id=1, cls_token_id=1,
        eos_token_id=2, sep_token_id=2,
    )
    torch.manual_seed(0)
    native = transformers.ModernBertForMaskedLM(native_config)
    native.save_pretrained(tmp_path / "native")
    tiny_tokenizer.save_pretrained(tmp_path / "native")

    cfg = load_config("demo", {"init_from": str(tmp_path / "native"), "train_tokenizer": "false",
                               "model_overrides": "{}", "max_seq_len": "64"})
    tokenizer = load_tokenizer(cfg.init_from)
    model = build_model(cfg, tokenizer)
    assert model.config.mask_token_id == tokenizer.mask_token_id == 3
    ours, theirs = model.state_dict(), native.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


def timed_throughput_callback(monkeypatch, warmup_steps: int):
    """A ThroughputCallback on a fake clock (`clock["now"]`, seconds) and a fake trainer counting tokens."""
    import train.run as run_module

    clock = {"now": 0.0}
    monkeypatch.setattr(run_module.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(run_module.torch.cuda, "is_available", lambda: False)
    trainer = SimpleNamespace(train_tokens_local=0)
    callback = run_module.ThroughputCallback(warmup_steps=warmup_steps)
    callback.trainer = trainer
    return callback, clock, trainer


def test_throughput_times_training_steps_only(monkeypatch):
    """Evaluation and checkpoint time is not training time: the clock stops before them and restarts after."""
    callback, clock, trainer = timed_throughput_callback(monkeypatch, warmup_steps=2)
    args, state = SimpleNamespace(world_size=2, process_index=0), SimpleNamespace(global_step=0)
    step_seconds = {1: 9.0, 2: 1.0, 3: 1.0, 4: 3.0, 5: 1.0, 6: 1.0}  # step 1: compilation; step 4: a stall
    evaluate_after = {4}
    for step in range(1, 7):
        control = SimpleNamespace(should_evaluate=step in evaluate_after, should_save=False,
                                  should_training_stop=step == 6)
        callback.on_step_begin(args, state, control)
        clock["now"] += step_seconds[step]
        trainer.train_tokens_local += 1000
        state.global_step = step
        callback.on_step_end(args, state, control)
        if control.should_evaluate:
            clock["now"] += 50.0  # evaluation: not timed
    callback.on_train_end(args, state, control)
    # Timed: steps 3-6 = 6 s for 4,000 tokens per process, 2 processes.
    assert callback.tokens_per_second == pytest.approx(2 * 4000 / 6.0)
    # Step 5 follows the evaluation: its interval is timed but not a step time (it would include the restart).
    assert callback.step_time_ms == {"median": 1000.0, "p90": 1000.0, "max": 3000.0, "steps": 3,
                                     "slowest": [[4, 3000.0], [3, 1000.0], [6, 1000.0]]}


def test_throughput_of_a_resumed_run_counts_warm_up_from_the_resumed_step(monkeypatch):
    """A run resumed at step 100 compiles again: its warm-up is the 2 steps after 100 (it used to wait for step 2,
    long past, and never time anything)."""
    callback, clock, trainer = timed_throughput_callback(monkeypatch, warmup_steps=2)
    args, state = SimpleNamespace(world_size=1, process_index=0), SimpleNamespace(global_step=100, max_steps=106)
    callback.on_train_begin(args, state, None)
    for step in range(101, 107):
        control = SimpleNamespace(should_evaluate=False, should_save=False, should_training_stop=step == 106)
        callback.on_step_begin(args, state, control)
        clock["now"] += 9.0 if step == 101 else 1.0
        trainer.train_tokens_local += 1000
        state.global_step = step
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    assert callback.tokens_per_second == pytest.approx(4000 / 4.0)  # steps 103-106
    assert callback.step_time_ms["steps"] == 4  # the intervals ending at steps 103-106

    # Resumed with a single step left: that step is timed, nothing is left unmeasured silently.
    callback, _, _ = timed_throughput_callback(monkeypatch, warmup_steps=2)
    callback.on_train_begin(args, SimpleNamespace(global_step=105, max_steps=106), None)
    assert callback.open_at == 106


@pytest.mark.parametrize("interval", [0, 3])
def test_garbage_collection_is_frozen_and_scheduled(monkeypatch, interval):
    """Long-lived objects are frozen at the start and after the first (compiling) step; with an interval, automatic
    collection is off while training and runs every `interval` steps; the collector is restored at the end."""
    import gc
    from types import SimpleNamespace

    import train.run as run_module

    assert gc.isenabled() and gc.get_freeze_count() == 0
    args, state, control = SimpleNamespace(process_index=0), SimpleNamespace(global_step=0), SimpleNamespace()
    collected_at: list[int] = []
    monkeypatch.setattr(run_module.gc, "collect", lambda *a: collected_at.append(state.global_step) or 0)
    callback = run_module.GarbageCollectionCallback(interval)
    callback.on_train_begin(args, state, control)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled() == (interval == 0)
    for step in range(1, 8):
        state.global_step = step
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    assert collected_at == [0, 1] + ([3, 6] if interval else [])
    assert gc.isenabled() and gc.get_freeze_count() == 0
    # A resumed run freezes after its own first step.
    collected_at.clear()
    resumed = run_module.GarbageCollectionCallback(interval)
    state.global_step = 40
    resumed.on_train_begin(args, state, control)
    state.global_step = 41
    resumed.on_step_end(args, state, control)
    resumed.on_train_end(args, state, control)
    assert collected_at == [40, 41]


@pytest.mark.parametrize("workers", [0, 4])
def test_training_arguments_avoid_per_step_and_per_epoch_stalls(tmp_path, workers):
    """No DDP unused-parameter search or buffer broadcast, no per-step NaN sync, and data-loader workers that
    outlive an epoch (a restart at each epoch stalls every DDP rank); `training_args` still overrides them."""
    from train.run import make_training_args

    overrides = {"output_dir": str(tmp_path), "dataloader_num_workers": str(workers)}
    args = make_training_args(load_config("demo", overrides), has_eval=True)
    assert args.dataloader_persistent_workers == (workers > 0)
    assert args.ddp_find_unused_parameters is False and args.ddp_broadcast_buffers is False
    assert args.logging_nan_inf_filter is False
    overrides["training_args"] = "{dataloader_persistent_workers: false, ddp_broadcast_buffers: true}"
    args = make_training_args(load_config("demo", overrides), has_eval=True)
    assert args.dataloader_persistent_workers is False and args.ddp_broadcast_buffers is True


def test_sparse_and_dense_logits_give_the_same_targets():
    labels = torch.tensor([[-100, 5, -100, 7]])
    dense = torch.arange(4 * 9, dtype=torch.float).view(1, 4, 9)
    logits, targets = masked_logits_and_targets(dense, labels)
    assert targets.tolist() == [5, 7]
    assert torch.equal(logits, dense[0, [1, 3]])
    sparse = dense[0, [1, 3]]
    logits, targets = masked_logits_and_targets(sparse, labels)
    assert logits is sparse and targets.tolist() == [5, 7]


def test_metrics_are_token_weighted():
    # Batch 1: loss sum 6 over 3 tokens, 2 correct. Batch 2: loss sum 1 over 1 token, 0 correct.
    prediction = types.SimpleNamespace(predictions=[[6.0, 3.0, 2.0], [1.0, 1.0, 0.0]])
    metrics = compute_mlm_metrics(prediction)
    assert metrics["loss"] == pytest.approx(7 / 4)
    assert metrics["perplexity"] == pytest.approx(math.exp(1.75))
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["masked_tokens"] == 4


def test_demo_check_helpers(tiny_tokenizer):
    split = datasets.Dataset.from_dict({
        "text": ["ICD-10-CM code E11.9: type diabetes mellitus without complications\nChapter 4: x",
                 "ICD-10-PCS code 0: left lung", "ICD-10-CM code J18.9: pneumonia of left lung"],
        "source": ["icd10cm", "icd10pcs", "icd10cm"],
    })
    assert icd10cm_descriptions(split) == ["ICD-10-CM code E11.9: type diabetes mellitus without complications",
                                           "ICD-10-CM code J18.9: pneumonia of left lung"]
    # WordLevel tokenizer: every known word is one token; words of >= 3 letters after a space are maskable,
    # in the description only: "code" (in the header) never is.
    line = "ICD-10-CM code J18.9: pneumonia of left lung"
    examples = make_masked_examples([line] * 20, tiny_tokenizer, n_examples=20, seed=0)
    assert {word for _, word in examples} == {"pneumonia", "left", "lung"}
    for masked, word in examples:
        assert masked == line.replace(f" {word}", " [MASK]")
    texts = ["the the the left left lung", "a left lung lung lung the"]
    # Counted only after a space: lung 4, left 3, the 3 (the first "the" starts the text); ties alphabetical.
    assert unigram_top_words(texts, tiny_tokenizer, k=2) == ["lung", "left"]


def test_base_preset_offline_fails_fast_with_actionable_errors(tmp_path, tiny_tokenizer):
    # The Hub tokenizer cannot be loaded offline: the error says what to do, before any corpus is built.
    with pytest.raises(TokenizerUnavailableError, match="--train_tokenizer true"):
        run(load_config("base", {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}))
    assert not (tmp_path / "cache").exists()
    # Same for the checkpoint, with a local tokenizer.
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    cfg = load_config("base", {"tokenizer": str(tmp_path / "tok")})
    with pytest.raises(OSError, match="could not load init_from='answerdotai/ModernBERT-base'.*--init_from"):
        build_model(cfg, load_tokenizer(cfg.tokenizer))


def test_card_metadata_base_model_only_for_hub_ids(tmp_path):
    info = ModelCardInfo(config=load_config("base"), base_model="answerdotai/ModernBERT-base",
                         sources=["pubmed", "icd10cm"])
    metadata = card_metadata(info)
    assert metadata["base_model"] == "answerdotai/ModernBERT-base"
    assert metadata["datasets"] == ["icd10cm", "pubmed"]
    info.base_model = str(tmp_path)  # a local folder is not a Hub reference
    assert "base_model" not in card_metadata(info)


def test_loss_series_from_log_history():
    history = [{"loss": 9.0, "step": 1}, {"eval_loss": 8.5, "step": 1}, {"loss": 7.0, "step": 2},
               {"train_runtime": 3.0, "step": 2}]
    assert loss_series(history) == ([(1, 9.0), (2, 7.0)], [(1, 8.5)])


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    for step, complete in ((2, True), (10, True), (12, False)):  # checkpoint-12: killed while saving
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if complete:
            (path / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()  # not a step number: ignored
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # numeric order: 10 > 2
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_torchrun_two_processes_gloo_on_cpu(corpus_dir, tmp_path):
    """The same entry point under torchrun: 2 CPU processes (gloo), rank 0 prepares the data, one folder written;
    gradients all-reduced through a compression hook."""
    out = tmp_path / "ddp"
    args = ["--preset", "demo", "--corpus", str(corpus_dir), "--cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(out), "--max_steps", "3", "--save_steps", "100", "--eval_steps", "100",
            "--demo_check", "false", "--ddp_comm_hook", "fp16"]
    args += [item for key, value in TINY.items() for item in (f"--{key}", value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--tee", "3",
         "-m", "train", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "gradient_as_bucket_view=True, broadcast_buffers=False, static_graph=False, comm hook fp16" in (
        proc.stdout + proc.stderr)
    # Each rank ends its process group before exiting (left to interpreter shutdown, gloo could abort the process).
    assert sorted(re.findall(r"process (\d): process group shut down", proc.stdout + proc.stderr)) == ["0", "1"]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 3
    # 3 steps x 2 bins per process x 2 processes of <= 64 tokens: the token count covers both processes.
    assert 3 * 2 * 2 * 40 < summary["tokens_seen"] <= 3 * 2 * 2 * 64


def test_tokens_seen_with_a_batch_larger_than_the_data_set(corpus_dir, tmp_path):
    """A batch larger than the data set holds the data set once: each step sees every packed token once."""
    out = tmp_path / "model"
    settings = {**TINY, "per_device_train_batch_size": "4096", "max_steps": "2", "eval_steps": "100",
                "save_steps": "100", "eval_on_start": "false", "demo_check": "false"}
    args = ["--preset", "demo", "--corpus", str(corpus_dir), "--cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(out), *(item for key, value in settings.items() for item in (f"--{key}", value))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["tokens_seen"] == 2 * summary["packing"]["train"]["tokens"]


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(corpus_dir, tmp_path):
    """A run killed with SIGKILL resumes from its last complete checkpoint; steps, data order and losses continue."""
    import signal
    import time

    def command(out: Path) -> list[str]:
        args = ["--preset", "demo", "--corpus", str(corpus_dir), "--cache_dir", str(tmp_path / "cache"),
                "--output_dir", str(out), "--max_steps", "120", "--save_steps", "5", "--save_total_limit", "3",
                "--eval_steps", "1000", "--demo_check", "false"]
        return [sys.executable, "-m", "train", *args, *[x for k, v in TINY.items() for x in (f"--{k}", v)]]

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(command(killed_out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed-checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "checkpoint-10").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_out / "model.safetensors").exists()
    resumed = subprocess.run(command(killed_out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    plain = subprocess.run(command(tmp_path / "plain"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]

    def losses(out: Path) -> dict[int, float]:
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["global_step"] == 120
        return {entry["step"]: entry["loss"] for entry in summary["train_loss_history"]}

    killed, uninterrupted = losses(killed_out), losses(tmp_path / "plain")
    assert sorted(killed) == sorted(uninterrupted) == list(range(1, 121))
    for step in range(1, 121):
        assert killed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step
