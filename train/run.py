"""Pre-train Clinical ModernBERT with the Hugging Face Trainer: ``python -m train --preset demo [--key value ...]``.

The steps, each in its own module:

1. corpus   -> ``train.corpora`` (a registry name, or a folder saved with ``DatasetDict.save_to_disk``);
2. tokenizer-> ``train.tokenizer`` (ModernBERT's own, a local folder, or a BPE trained on the corpus);
3. packing  -> ``train.packing`` (best-fit bins of ``max_seq_len`` tokens, cached);
4. masking  -> ``train.masking`` (one unpadded row per batch, 80/10/10, rate decaying 30 % -> 15 %);
5. Trainer  -> :class:`MLMTrainer` here (sparse MLM loss normalised over the whole accumulated batch; evaluation
   reports loss, perplexity and masked-token accuracy);
6. output   -> ``output_dir`` is a Hub model repo: model + remote code + tokenizer + model card + loss curve.
   Checkpoints (with optimizer state) go to ``checkpoint_dir`` (``<output_dir>-checkpoints``) and training
   resumes from the last one automatically.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed

from train.config import ConfigError, TrainConfig
from train.masking import IGNORE_INDEX, MaskingScheduleCallback, PackedMLMCollator
from train.packing import PackReport, corpus_fingerprint, fill_corpus_report_tokens, pack_corpus
from train.profiling import (
    STEP_NAME,
    StepTimeline,
    format_timelines,
    kernel_summary,
    load_trace,
    step_timelines,
)
from train.tokenizer import (
    MODERNBERT_TOKENIZER_ID,
    check_tokenizer_matches_config,
    load_tokenizer,
    round_up_to_multiple,
    save_tokenizer,
    special_token_ids,
    train_bpe_tokenizer,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusSource:
    """A named corpus: what it is, and how to build it into ``out_dir`` -> (DatasetDict, CorpusReport | None)."""

    description: str
    build: Callable[[Path, dict[str, Any]], tuple[datasets.DatasetDict, Any]]


def _build_sample(out_dir: Path, options: dict[str, Any]) -> tuple[datasets.DatasetDict, Any]:
    from train.corpora.sample import build_sample_corpus

    return build_sample_corpus(out_dir, **options)


CORPORA: dict[str, CorpusSource] = {
    "sample": CorpusSource(
        "embedded sample corpus built from data shipped in installed packages (PubMed abstracts, ICD-10-CM/PCS, "
        "ICD-9-CM and HPO code texts) plus synthetic notes; train/validation splits",
        _build_sample,
    ),
}


def load_corpus(cfg: TrainConfig) -> tuple[datasets.DatasetDict, Any]:
    """The corpus named by ``cfg.corpus`` (a :data:`CORPORA` key or a saved DatasetDict folder) and its report."""
    if cfg.corpus in CORPORA:
        options_key = hashlib.sha256(json.dumps(cfg.corpus_options, sort_keys=True).encode()).hexdigest()[:8]
        out_dir = Path(cfg.cache_dir) / f"corpus-{cfg.corpus}-{options_key}"
        corpus, report = CORPORA[cfg.corpus].build(out_dir, dict(cfg.corpus_options))
    else:
        path = Path(cfg.corpus)
        if not (path / "dataset_dict.json").is_file():
            raise ConfigError(
                f"corpus={cfg.corpus!r} is neither a known corpus ({', '.join(sorted(CORPORA))}) nor a folder "
                "saved with DatasetDict.save_to_disk (no dataset_dict.json inside)"
            )
        corpus = datasets.load_from_disk(str(path))
        report = None
        if (path / "corpus_report.json").is_file():
            from train.corpora.report import CorpusReport

            report = CorpusReport.load(path)
    if "train" not in corpus:
        raise ConfigError(f"corpus {cfg.corpus!r} has no 'train' split (splits: {sorted(corpus)})")
    logger.info("corpus %s: %s", cfg.corpus, {name: len(split) for name, split in corpus.items()})
    return corpus, report


# --------------------------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------------------------
def prepare_tokenizer(cfg: TrainConfig, corpus: datasets.DatasetDict | None = None) -> PreTrainedTokenizerBase:
    """Train (and cache) a BPE on the train split, or load ``cfg.tokenizer`` / the ``init_from`` checkpoint's."""
    if cfg.train_tokenizer:
        if corpus is None:
            raise ValueError("train_tokenizer needs the corpus")
        key = hashlib.sha256(
            f"{corpus_fingerprint(corpus['train'])}|{cfg.tokenizer_vocab_size}".encode()
        ).hexdigest()[:16]
        cached = Path(cfg.cache_dir) / f"tokenizer-{cfg.tokenizer_vocab_size}-{key}"
        if (cached / "tokenizer.json").is_file():
            logger.info("using the tokenizer trained earlier on this corpus: %s", cached)
            return load_tokenizer(str(cached))
        tokenizer = train_bpe_tokenizer(corpus["train"]["text"], vocab_size=cfg.tokenizer_vocab_size)
        save_tokenizer(tokenizer, cached)
        return load_tokenizer(str(cached))
    return load_tokenizer(cfg.tokenizer or cfg.init_from or MODERNBERT_TOKENIZER_ID)


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """A fresh model of ``cfg.model_preset`` sized to the tokenizer, or ``cfg.init_from`` with config overrides."""
    from configuration_clinical_modernbert import ClinicalModernBertConfig
    from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM

    overrides = {"attention_backend": cfg.attention_backend, **cfg.model_overrides}
    if cfg.init_from:
        native_config = Path(cfg.init_from) / "config.json"
        if native_config.is_file() and "mask_token_id" not in json.loads(native_config.read_text()):
            # transformers' ModernBertConfig has no mask_token_id; take the checkpoint tokenizer's.
            overrides.setdefault("mask_token_id", tokenizer.mask_token_id)
        try:
            model = ClinicalModernBertForMaskedLM.from_pretrained(cfg.init_from, **overrides)
        except OSError as err:
            raise OSError(
                f"could not load init_from={cfg.init_from!r}: not a local model folder, and the Hugging Face Hub is "
                f"unreachable or offline (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). Download "
                "the checkpoint elsewhere and pass its folder with --init_from /path/to/folder."
            ) from err
    else:
        overrides.setdefault("max_position_embeddings", max(cfg.max_seq_len, 512))
        config = ClinicalModernBertConfig.from_preset(
            cfg.model_preset,
            **{"vocab_size": round_up_to_multiple(len(tokenizer)), **special_token_ids(tokenizer), **overrides},
        )
        model = ClinicalModernBertForMaskedLM(config)
    check_tokenizer_matches_config(tokenizer, model.config)
    if model.config.max_position_embeddings < cfg.max_seq_len:
        raise ConfigError(
            f"max_seq_len={cfg.max_seq_len} exceeds the model's max_position_embeddings="
            f"{model.config.max_position_embeddings}; set model_overrides.max_position_embeddings"
        )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %.1fM parameters, %s", n_params / 1e6, {k: getattr(model.config, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "global_rope_theta")})
    return model


# --------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------
def masked_logits_and_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_masked, vocab) logits and (n_masked,) targets from sparse ``(n_masked, V)`` or dense ``(B, S, V)`` logits."""
    selected = labels != IGNORE_INDEX
    targets = labels[selected]
    if logits.dim() == 2 and logits.shape[0] == targets.numel():
        return logits, targets  # sparse prediction: rows are in the order of labels[labels != -100]
    return logits[selected], targets


class MLMTrainer(Trainer):
    """Trainer with the MLM loss normalised over every masked token of the accumulated batch, and MLM metrics.

    ``compute_loss`` turns the model's mean cross-entropy into a sum over the micro-batch's masked tokens and
    divides it by ``num_items_in_batch`` (the masked tokens of all micro-batches of the step, over all devices), so
    gradient accumulation gives the same gradient as one big batch although packed micro-batches hold different
    numbers of masked tokens.
    ``prediction_step`` returns per-batch sums ``[loss_sum, n_masked, n_correct]``; :func:`compute_mlm_metrics`
    turns them into token-weighted ``eval_loss``, ``eval_perplexity`` and ``eval_accuracy``.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, eval_data_collator: Callable | None = None, ddp_comm_hook: str = "none",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self.ddp_comm_hook = ddp_comm_hook

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        handler = getattr(self.accelerator, "ddp_handler", None)
        if handler is not None and hasattr(handler, "gradient_as_bucket_view"):
            # DDP's gradients live in its all-reduce buckets: no copy into the buckets and back every step.
            handler.gradient_as_bucket_view = True

    def get_eval_dataloader(self, eval_dataset=None):
        # Evaluation masks with its own collator (fixed rate, fixed seed) so eval losses are comparable over a run.
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not getattr(self, "_ddp_ready", False) and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            self._ddp_ready = True  # the first forward: before any backward, when DDP accepts a comm hook
            if self.ddp_comm_hook != "none":
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                hook = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}
                model.register_comm_hook(None, hook[self.ddp_comm_hook])
            logger.info("DDP over %d processes: gradient_as_bucket_view=%s, broadcast_buffers=%s, static_graph=%s, "
                        "comm hook %s", self.accelerator.num_processes, model.gradient_as_bucket_view,
                        model.broadcast_buffers, model.static_graph, self.ddp_comm_hook)
        if model.training:  # host-side count (numel is metadata: no device sync); packed batches have no padding
            self.train_tokens_local = getattr(self, "train_tokens_local", 0) + inputs["input_ids"].numel()
        outputs = model(**inputs)
        # The model's loss is the mean over this micro-batch's masked tokens (its logits may be None in training:
        # it can compute the loss in chunks without storing them). mean x count = sum, re-normalised below.
        positions = inputs.get("masked_positions")  # from our collator: a host-side count, no kernel
        n_masked = positions.numel() if positions is not None else (inputs["labels"] != IGNORE_INDEX).sum()
        if num_items_in_batch is None:  # not counted by the Trainer: fall back to this micro-batch's mean
            loss = outputs.loss / self.current_gradient_accumulation_steps
        else:
            loss = outputs.loss * n_masked / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        logits, targets = masked_logits_and_targets(outputs.logits, inputs["labels"])
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        correct = (logits.argmax(dim=-1) == targets).sum()
        stats = torch.stack([loss_sum, torch.tensor(float(targets.numel()), device=loss_sum.device),
                             correct.float()]).view(1, 3)
        return None, stats, stats


class ThroughputCallback(TrainerCallback):
    """Real tokens/s of the training steps after `warmup_steps` (compilation and allocator warm-up excluded), summed
    over processes; this process's step times and peak accelerator memory. Warm-up counts from the step training
    starts at, so a run resumed from a checkpoint (which compiles again) is timed too.

    Only training is timed: the clock stops before an evaluation or a checkpoint save (and the final ones) and
    restarts at the next step, so a run's eval and save time do not dilute its throughput. The device is synced
    only where the clock starts or stops. Step times are host-side intervals between step ends, taken without a
    sync: the host runs at most about a step ahead of the device (the kernel launch queue is bounded, and logging
    steps sync), so their median, 90th percentile and maximum show whether a slow run is slow at every step or
    stalls now and then.
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.open_at = warmup_steps  # the step whose end starts the clock
        self.trainer: MLMTrainer | None = None
        self.open: tuple[float, int] | None = None  # (time, tokens) where the running interval started
        self.timed_seconds = 0.0
        self.timed_tokens = 0
        self.last_step_end: float | None = None
        self.step_seconds: list[tuple[int, float]] = []  # (optimizer step, host-side seconds)
        self.tokens_per_second: float | None = None
        self.peak_memory_gib: float | None = None
        self.step_time_ms: dict[str, float] | None = None

    def _mark(self) -> tuple[float, int]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter(), getattr(self.trainer, "train_tokens_local", 0)

    def _close(self) -> None:
        (t0, n0), (t1, n1) = self.open, self._mark()
        self.timed_seconds += t1 - t0
        self.timed_tokens += n1 - n0
        self.open, self.last_step_end = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        remaining = getattr(state, "max_steps", 0) - state.global_step  # a resumed run may have few steps left
        warmup = min(self.warmup_steps, max(remaining - 1, 1)) if remaining > 0 else self.warmup_steps
        self.open_at = state.global_step + warmup

    def on_step_begin(self, args, state, control, **kwargs):
        if self.open is None and state.global_step >= self.open_at and self.timed_seconds > 0:
            self.open = self._mark()  # after an evaluation or a save

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.open is not None and self.last_step_end is not None:
            self.step_seconds.append((state.global_step, now - self.last_step_end))
        if state.global_step == self.open_at:
            self.open = self._mark()
            self.last_step_end = self.open[0]
        elif self.open is not None:
            self.last_step_end = now
        # The flow callback, registered first, has set these for the work that follows this step.
        if self.open is not None and (control.should_evaluate or control.should_save or control.should_training_stop):
            self._close()

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            self.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
        if self.open is not None:
            self._close()
        if self.timed_seconds > 0:
            self.tokens_per_second = self.timed_tokens * args.world_size / self.timed_seconds
        if self.step_seconds:
            times = sorted(1e3 * t for _, t in self.step_seconds)
            slowest = sorted(self.step_seconds, key=lambda step_time: -step_time[1])[:3]
            self.step_time_ms = {"median": round(times[len(times) // 2], 2),
                                 "p90": round(times[int(0.9 * (len(times) - 1))], 2),
                                 "max": round(times[-1], 2), "steps": len(times),
                                 "slowest": [[step, round(1e3 * t, 1)] for step, t in slowest]}
            logger.info("process %d: step time median %.1f ms, p90 %.1f ms, max %.1f ms over %d timed steps; "
                        "slowest: %s", args.process_index,
                        *(self.step_time_ms[k] for k in ("median", "p90", "max", "steps")),
                        ", ".join(f"step {step} {ms:.0f} ms" for step, ms in self.step_time_ms["slowest"]))


class GarbageCollectionCallback(TrainerCallback):
    """Keeps Python's garbage collector from pausing training for long.

    A full collection scans every tracked object, and a training process holds about half a million before its first
    step (torch, transformers, datasets, the model): about 390 ms per collection, on the 2-core CPU machine and on
    H100 hosts alike. Those objects live until the end, so at the start of training, and again after the first step
    (which compiles), they are collected once and frozen (`gc.freeze`): later collections skip them (0.01 ms).

    With `interval` > 0, automatic collection is also off while training and a collection runs every `interval`
    optimizer steps, at the same step on every process. Under DDP a pause on one process stalls all of them at the
    next all-reduce. Megatron-LM's `--manual-gc` does the same.
    """

    def __init__(self, interval: int = 0) -> None:
        self.interval = interval
        self.pauses_ms: list[float] = []
        self.was_enabled = True
        self.stepped = False

    def _collect(self, freeze: bool = False) -> None:
        start = time.perf_counter()
        gc.collect()
        if freeze:
            gc.freeze()
        self.pauses_ms.append(1e3 * (time.perf_counter() - start))

    def on_train_begin(self, args, state, control, **kwargs):
        self.was_enabled = gc.isenabled()
        self._collect(freeze=True)
        if self.interval > 0:
            gc.disable()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.stepped:  # what compiling the first step (of this run: it may resume) made is long-lived too
            self.stepped = True
            self._collect(freeze=True)
        elif self.interval > 0 and state.global_step % self.interval == 0:
            self._collect()

    def on_train_end(self, args, state, control, **kwargs):
        gc.unfreeze()
        if self.was_enabled:
            gc.enable()
        logger.info("process %d: %d garbage collections by schedule, longest %.1f ms (before freezing: %.1f ms)",
                    args.process_index, len(self.pauses_ms), max(self.pauses_ms[1:], default=0.0), self.pauses_ms[0])


class ProfilerCallback(TrainerCallback):
    """`torch.profiler` over optimizer steps `first..last` of the main process: where the Trainer's step goes.

    Writes `trace.json` (open it in Perfetto or chrome://tracing; each step is a `train_step` range) and
    `summary.txt` (top operators by device and by CPU time) to `out_dir`, and logs the wall time per step against
    the GPU kernel time per step: a GPU busy share well under 100% means the step waits on the host (Python, data
    loading, synchronisations). On CUDA, the summary also has each step's timeline (`bench/timeline.py`): how much
    of the GPU's idle time waited for the CPU to launch work, and how much was the GPU's own.
    """

    def __init__(self, out_dir: str | os.PathLike, first: int, last: int) -> None:
        self.out_dir, self.first, self.last = Path(out_dir), first, last
        self.profiler: torch.profiler.profile | None = None
        self.step_range: torch.profiler.record_function | None = None
        self.started_at = 0.0
        self.summary: dict[str, Any] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.profiler is None and self.summary is None and state.global_step + 1 == self.first \
                and state.is_world_process_zero:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.started_at = time.perf_counter()
        if self.profiler is not None:
            self.step_range = torch.profiler.record_function(STEP_NAME)
            self.step_range.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_range is not None:
            self.step_range.__exit__(None, None, None)
            self.step_range = None
        if self.profiler is None or state.global_step < self.last:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.started_at
        self.profiler.__exit__(None, None, None)
        steps = self.last - self.first + 1
        events = self.profiler.key_averages()
        kernels = kernel_summary(events, steps)
        self.summary = {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps,
                        "gpu_kernel_ms_per_step": kernels["kernel_ms_per_step"],
                        "gpu_busy": kernels["kernel_ms_per_step"] * steps / 1e3 / wall if wall > 0 else 0.0,
                        "groups_ms_per_step": kernels["groups_ms_per_step"],
                        "attention_calls_per_step": kernels["attention_calls_per_step"]}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / "trace.json"
        self.profiler.export_chrome_trace(str(trace))
        timelines = self._timelines(trace) if torch.cuda.is_available() else None
        if timelines:
            self.summary["gpu_idle_ms_per_step"] = sum(t.idle_ms for t in timelines) / len(timelines)
            self.summary["gpu_idle_waiting_for_cpu_ms_per_step"] = (
                sum(t.idle_waiting_for_cpu_ms for t in timelines) / len(timelines))
        tables = [json.dumps(self.summary, indent=2)]
        if timelines:
            tables.append("step timelines (bench/timeline.py):\n" + format_timelines(timelines))
        if torch.cuda.is_available():
            tables.append(events.table(sort_by="self_device_time_total", row_limit=40))
        tables.append(events.table(sort_by="self_cpu_time_total", row_limit=40))
        (self.out_dir / "summary.txt").write_text("\n\n".join(tables) + "\n")
        waiting = (f", {self.summary['gpu_idle_waiting_for_cpu_ms_per_step']:.1f} ms/step of GPU idle waiting for "
                   "the CPU" if timelines else "")
        logger.info("profile of steps %d-%d: %.1f ms/step wall, %.1f ms/step of GPU kernels (GPU busy %.0f%%)%s; "
                    "trace and summary in %s", self.first, self.last, self.summary["wall_ms_per_step"],
                    self.summary["gpu_kernel_ms_per_step"], 100 * self.summary["gpu_busy"], waiting, self.out_dir)
        self.profiler = None

    @staticmethod
    def _timelines(trace: Path) -> list[StepTimeline] | None:
        """The profiled steps' timelines, or None (logged) where the trace has none, e.g. a model on the CPU."""
        try:
            return step_timelines(load_trace(trace))
        except ValueError as error:
            logger.warning("no step timelines from %s: %s", trace, error)
            return None


def compute_mlm_metrics(eval_prediction: Any) -> dict[str, float]:
    """Token-weighted MLM loss, perplexity and accuracy from the per-batch sums of ``MLMTrainer.prediction_step``."""
    stats = torch.as_tensor(eval_prediction.predictions, dtype=torch.float64).reshape(-1, 3).sum(dim=0)
    loss_sum, n_masked, n_correct = stats.tolist()
    loss = loss_sum / max(n_masked, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": n_correct / max(n_masked, 1.0),
            "masked_tokens": int(n_masked)}


def _bf16(cfg: TrainConfig) -> bool:
    if cfg.bf16 == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cfg.bf16 == "true"


def make_training_args(cfg: TrainConfig, has_eval: bool) -> TrainingArguments:
    """TrainingArguments from the config; ``cfg.training_args`` may set any other field (checked by name)."""
    num_decay_steps = round(cfg.decay_ratio * cfg.max_steps)
    scheduler_kwargs: dict[str, Any] = {}
    if cfg.lr_scheduler_type == "warmup_stable_decay":
        if cfg.warmup_steps + num_decay_steps > cfg.max_steps:
            raise ConfigError(
                f"warmup_steps={cfg.warmup_steps} + decay steps {num_decay_steps} (decay_ratio={cfg.decay_ratio} x "
                f"max_steps={cfg.max_steps}) exceed max_steps"
            )
        scheduler_kwargs = {"num_decay_steps": num_decay_steps, "min_lr_ratio": cfg.min_lr_ratio}
    optim = cfg.optim
    if optim == "auto":
        optim = "adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch"
    known = set(TrainingArguments.__dataclass_fields__)
    unknown = sorted(set(cfg.training_args) - known)
    if unknown:
        raise ConfigError(f"training_args has keys that are not TrainingArguments fields: {unknown}")
    values: dict[str, Any] = {
        "output_dir": cfg.resolved_checkpoint_dir,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "per_device_eval_batch_size": cfg.per_device_eval_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "adam_beta1": cfg.adam_beta1,
        "adam_beta2": cfg.adam_beta2,
        "adam_epsilon": cfg.adam_epsilon,
        "max_grad_norm": cfg.max_grad_norm,
        "optim": optim,
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "lr_scheduler_kwargs": scheduler_kwargs,
        "warmup_steps": cfg.warmup_steps,
        "bf16": _bf16(cfg),
        "torch_compile": cfg.torch_compile,
        "logging_steps": cfg.logging_steps,
        "logging_first_step": True,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_on_start": has_eval and cfg.eval_on_start,  # the step-0 loss that training improves on
        "eval_steps": cfg.eval_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": [] if cfg.report_to == "none" else [cfg.report_to],
        "remove_unused_columns": False,  # the collator builds the model inputs from input_ids + seq_lens
        "label_names": ["labels"],
        "dataloader_num_workers": cfg.dataloader_num_workers,
        # Workers outlive an epoch: otherwise each new epoch starts new worker processes, and under DDP every rank
        # waits for the slowest to restart (a 150-250 ms stall per epoch on the 2xH100 bench).
        "dataloader_persistent_workers": cfg.dataloader_num_workers > 0,
        "disable_tqdm": False,
        "use_cpu": not torch.cuda.is_available(),
        # Every parameter of the MLM model gets a gradient each step: DDP need not search the graph for unused ones
        # (the Trainer's default for models without gradient checkpointing), which costs time every step.
        "ddp_find_unused_parameters": False,
        # The only buffers are the constant RoPE frequencies: no broadcast (a collective) before every forward.
        "ddp_broadcast_buffers": False,
        # The NaN/inf filter reads every step's loss on the host: a device sync per step that idles the GPU while
        # the host prepares the next one. Without it a NaN loss is logged as NaN, which is what one wants to see.
        "logging_nan_inf_filter": False,
    }
    if torch.cuda.is_available():
        # Batches are copied to the GPU from pinned memory without blocking: a blocking copy waits for the whole
        # previous step to finish, and the GPU then idles while the host prepares the next one.
        values.update(dataloader_pin_memory=True, accelerator_config={"non_blocking": True})
    return TrainingArguments(**{**values, **cfg.training_args})


def plain_model(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model` as an instance of its own class, holding the full `state_dict`.

    FSDP2 (`fully_shard`) swaps the class of a sharded module for a generated `FSDP<Name>` subclass defined in
    torch's sources; `save_pretrained` would then copy those sources into the model folder as remote code. Such a
    model is rebuilt from its config and the gathered full state dict; any other model is returned as it is.
    """
    from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM

    if type(model) is ClinicalModernBertForMaskedLM:
        return model
    clean = ClinicalModernBertForMaskedLM(model.config)
    missing, unexpected = clean.load_state_dict(state_dict, strict=False)
    tied = {"decoder.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"the gathered state dict does not fit {type(clean).__name__}: missing "
                           f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    clean.tie_weights()
    return clean


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written completely, or None.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without it was cut short (the process was
    killed while saving); resuming from it would fail, so it is skipped with a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = sorted(
        (int(path.name.split("-")[1]), path) for path in folder.glob("checkpoint-*")
        if path.is_dir() and path.name.split("-")[1].isdigit()
    )
    for _, path in reversed(steps):
        if (path / "trainer_state.json").is_file():
            return str(path)
        logger.warning("skipping the incomplete checkpoint %s (no trainer_state.json: cut short while saving)", path)
    return None


def resolve_resume(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: ``"auto"`` -> the last complete one in the checkpoint dir (None if none)."""
    value = cfg.resume_from_checkpoint
    if value is None:
        return None
    if value == "auto":
        return last_complete_checkpoint(cfg.resolved_checkpoint_dir)
    if not (Path(value) / "trainer_state.json").is_file():
        raise ConfigError(
            f"resume_from_checkpoint={value!r} is not a complete checkpoint folder (no trainer_state.json inside)"
        )
    return value


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a run produced: the model folder, final evaluation metrics and the data reports."""

    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    pack_reports: dict[str, PackReport] = field(default_factory=dict)
    global_step: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    resumed_from: str | None = None
    demo_check: dict[str, Any] | None = None
    tokens_per_second: float | None = None  # real tokens/s after warm-up, all processes
    peak_memory_gib: float | None = None


@contextlib.contextmanager
def main_process_first():
    """Under torchrun (WORLD_SIZE > 1), rank 0 runs the block first and the other ranks after it.

    The process group is started here (gloo on CPU, NCCL on GPUs) and the Trainer reuses it. accelerate's
    `PartialState` is not used for this: on CPU under torchrun it reports a single process, which made the
    "wait for rank 0" a no-op and let every rank build the same caches at once.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    is_main = dist.get_rank() == 0
    if not is_main:
        dist.barrier()
    try:
        yield
    finally:
        if is_main:
            dist.barrier()


def hardware_description() -> str:
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x {names[0]}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run(cfg: TrainConfig) -> RunResult:
    """Run one pre-training job end to end and return what it produced."""
    from train.model_card import ModelCardInfo, write_model_card
    from train.plots import plot_loss_curves

    start = time.time()
    # Fail fast: a tokenizer or checkpoint that cannot be loaded (offline Hub id) is reported before the corpus
    # is built, unless the tokenizer has to be trained on that corpus.
    # Under torchrun/accelerate, rank 0 builds the corpus, tokenizer and packed cache first; the other ranks then
    # read them from the cache. Each rank later reads only its own sampler's share of the memory-mapped bins.
    with main_process_first():
        corpus = corpus_report = None
        if cfg.train_tokenizer:
            corpus, corpus_report = load_corpus(cfg)
        tokenizer = prepare_tokenizer(cfg, corpus)
        # Seed right before the weights are drawn: whether the tokenizer was trained or read from the cache must
        # not change the initial model.
        set_seed(cfg.seed)
        model = build_model(cfg, tokenizer)
        if corpus is None:
            corpus, corpus_report = load_corpus(cfg)
        packed, pack_reports = pack_corpus(corpus, tokenizer, cfg.max_seq_len, cache_dir=cfg.cache_dir,
                                           num_proc=cfg.num_proc)
        if corpus_report is not None:
            fill_corpus_report_tokens(corpus_report, pack_reports)

    has_eval = "validation" in packed and len(packed["validation"]) > 0
    eval_dataset = packed["validation"] if has_eval else None
    if not has_eval:
        logger.warning("the corpus has no validation split: training without evaluation")
    elif cfg.max_eval_samples is not None and cfg.max_eval_samples < len(eval_dataset):
        # A seeded sample, not the first bins: bins are created longest documents first.
        eval_dataset = eval_dataset.shuffle(seed=cfg.seed).select(range(cfg.max_eval_samples))
        logger.info("evaluating on %d of %d packed validation examples", cfg.max_eval_samples,
                    len(packed["validation"]))
    collator_kwargs = {"mask_replace_prob": cfg.mask_replace_prob, "random_replace_prob": cfg.random_replace_prob}
    train_collator = PackedMLMCollator(tokenizer, cfg.mlm_probability_start, seed=cfg.seed, **collator_kwargs)
    eval_collator = PackedMLMCollator(tokenizer, cfg.eval_mlm_probability, seed=cfg.seed + 1, **collator_kwargs)
    schedule = MaskingScheduleCallback(train_collator, cfg.mlm_probability_start, cfg.mlm_probability_end,
                                       cfg.mlm_schedule, cfg.mlm_schedule_steps)
    args = make_training_args(cfg, has_eval)

    trainer = MLMTrainer(
        model=model,
        args=args,
        train_dataset=packed["train"],
        eval_dataset=eval_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        ddp_comm_hook=cfg.ddp_comm_hook,
        processing_class=tokenizer,
        compute_metrics=compute_mlm_metrics,
        callbacks=[schedule],
    )
    # Skip compilation, autotuning and allocator warm-up: the first tenth of the run, at least 10 steps (fewer when
    # the run is shorter: see `ThroughputCallback.on_train_begin`).
    throughput = ThroughputCallback(warmup_steps=max(10, cfg.max_steps // 10))
    throughput.trainer = trainer
    trainer.add_callback(throughput)
    trainer.add_callback(GarbageCollectionCallback(cfg.gc_interval))
    profiler = None
    if cfg.profile_range is not None:
        # Next to the checkpoints, not in the model folder: a trace is not a model artifact.
        profiler = ProfilerCallback(Path(cfg.resolved_checkpoint_dir) / "profile", *cfg.profile_range)
        trainer.add_callback(profiler)
    resume = resolve_resume(cfg)
    if resume:
        logger.info("resuming from %s", resume)
    train_start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - train_start
    metrics = trainer.evaluate() if has_eval else {}
    # Every rank takes part: under FSDP this gathers the sharded parameters into one full state dict.
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.is_world_process_zero():  # one process writes the model folder
        return RunResult(output_dir=Path(cfg.output_dir), metrics=metrics, global_step=trainer.state.global_step)

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final_model = plain_model(trainer.accelerator.unwrap_model(trainer.model), state_dict)
    final_model.save_pretrained(output_dir, state_dict=state_dict)
    save_tokenizer(tokenizer, output_dir)
    curves = plot_loss_curves(trainer.state.log_history, output_dir / "loss_curve.png")

    train_report = pack_reports["train"]
    mean_tokens_per_example = train_report.tokens / max(train_report.bins, 1)
    # A step never spans more than one epoch: a batch larger than the data set holds the whole data set.
    examples_per_step = min(cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * args.world_size,
                            train_report.bins)
    tokens_seen = round(trainer.state.global_step * examples_per_step * mean_tokens_per_example)
    result = RunResult(
        output_dir=output_dir,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        pack_reports=pack_reports,
        global_step=trainer.state.global_step,
        tokens_seen=tokens_seen,
        train_seconds=train_seconds,
        resumed_from=resume,
    )
    if cfg.demo_check and "validation" in corpus:
        from train.demo_check import run_demo_check

        result.demo_check = run_demo_check(
            output_dir, corpus["validation"], corpus["train"], n_examples=cfg.demo_check_examples, seed=cfg.seed
        ).to_dict()
    info = ModelCardInfo(
        config=cfg,
        metrics=result.metrics,
        global_step=result.global_step,
        tokens_seen=tokens_seen,
        hardware=hardware_description(),
        train_seconds=train_seconds,
        corpus_report=corpus_report,
        pack_reports=pack_reports,
        loss_curve=curves.name if curves else None,
        base_model=cfg.init_from,
        sources=sorted({source for report in pack_reports.values() for source in report.tokens_by_source}),
        optimizer=str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        demo_check=result.demo_check,
    )
    write_model_card(output_dir, info)
    (output_dir / "training_summary.json").write_text(json.dumps({
        "preset": cfg.preset,
        "config": cfg.to_dict(),
        "global_step": result.global_step,
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "train_loss_history": [{"step": entry["step"], "loss": entry["loss"]}
                               for entry in trainer.state.log_history if "loss" in entry],
        "eval_history": [{"step": entry["step"], "eval_loss": entry["eval_loss"]}
                         for entry in trainer.state.log_history if "eval_loss" in entry],
        "tokens_per_second": throughput.tokens_per_second,
        "peak_memory_gib": throughput.peak_memory_gib,
        "step_time_ms": throughput.step_time_ms,
        "profile": profiler.summary if profiler is not None else None,
        "total_seconds": round(time.time() - start, 1),
        "hardware": hardware_description(),
        "metrics": result.metrics,
        "packing": {name: report.to_dict() for name, report in pack_reports.items()},
        "corpus": corpus_report.to_dict() if corpus_report is not None else None,
        "demo_check": result.demo_check,
    }, indent=2) + "\n")
    logger.info("wrote the model folder %s (step %d, %s)", output_dir, result.global_step, result.metrics)
    result.tokens_per_second, result.peak_memory_gib = throughput.tokens_per_second, throughput.peak_memory_gib
    return result


def shut_down_process_group() -> None:
    """End the process group the Trainer started under torchrun/accelerate, before the interpreter exits.

    Left to interpreter shutdown, gloo's threads can be destroyed while still joinable: the process then aborts
    ("terminate called without an active exception") after a successful run. The DDP wrapper and its reducer hold
    the group, so they are collected first; the barrier lets every rank finish before any tears down.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    gc.collect()
    torch.distributed.barrier()
    rank = torch.distributed.get_rank()
    torch.distributed.destroy_process_group()
    logger.info("process %d: process group shut down", rank)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: parse ``--preset`` and overrides, run, print the result summary."""
    import sys

    from train.config import available_presets, load_config, parse_cli

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: python -m train --preset NAME [--key value ...]")
        print(f"presets: {', '.join(available_presets())}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    preset, overrides = parse_cli(argv)
    cfg = load_config(preset, overrides)
    result = run(cfg)
    shut_down_process_group()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    print(f"model folder: {result.output_dir}")
    print(f"steps: {result.global_step}, tokens seen: ~{result.tokens_seen:,}, train time: {result.train_seconds:.0f}s")
    if result.tokens_per_second:
        peak = f", peak memory {result.peak_memory_gib:.2f} GiB" if result.peak_memory_gib else ""
        print(f"throughput: {result.tokens_per_second:,.0f} real tokens/s after warm-up{peak}")
    for name, report in result.pack_reports.items():
        print(f"packing {name}: fill rate {100 * report.fill_rate:.2f}% ({report.tokens:,} tokens, {report.bins} bins)")
    if result.metrics:
        shown = ("eval_loss", "eval_perplexity", "eval_accuracy")
        print("eval: " + ", ".join(f"{k}={result.metrics[k]:.4f}" for k in shown if k in result.metrics))
    if result.demo_check:
        check = result.demo_check
        print(f"fill-mask top-5 accuracy on {check['n_examples']} held-out ICD-10-CM descriptions: model "
              f"{check['model_top5_accuracy']:.3f} (word guesses; raw top-5 {check['model_raw_top5_accuracy']:.3f}) "
              f"vs corpus unigram baseline {check['baseline_top5_accuracy']:.3f} "
              f"(in-domain unigram {check['domain_baseline_top5_accuracy']:.3f})")
    return 0
