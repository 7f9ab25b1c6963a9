"""Speed of Clinical ModernBERT against transformers' ModernBERT: one run, identical weights, identical batches.

For every geometry (base, large, ...), shape (training at 1024 and 8192, inference at 512 and 8192) and model
(ours with each attention backend; transformers with sdpa and flex_attention), the harness times a full training
step (forward, backward, AdamW step) or an inference forward, and reports real (non-padding) tokens/s, the speed-up
over transformers+sdpa, peak memory and MFU (useful FLOPs, see `bench/flops.py`). transformers gets each batch
padded, as its users feed it; our model gets the same documents packed for training (what our collator produces)
and the same padded batch for inference (what a tokenizer gives users).

    python -m bench.bench --out outputs/bench/speed.json                 # GPU: base + large, every shape
    python -m bench.bench --device cpu --quick                            # CPU smoke run
    python -m bench.bench --only train-1024,infer-512 --geometries base   # a subset

Imports only torch, transformers, the repository's model files and the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import DocumentBatch, build_batch, sample_document_lengths  # noqa: E402
from bench.flops import default_peak_tflops, inference_flops, measure_matmul_tflops, training_flops  # noqa: E402
from configuration_clinical_modernbert import ClinicalModernBertConfig  # noqa: E402
from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM, ClinicalModernBertModel  # noqa: E402

logger = logging.getLogger(__name__)

BASELINE = "transformers-sdpa"


# --------------------------------------------------------------------------------------------------------------------
# Registries: geometries, shapes, models
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeometrySpec:
    description: str
    preset: str
    overrides: dict = field(default_factory=dict)
    cpu_layers: int | None = None  # layers used on CPU unless --num-layers says otherwise (keeps the run short)


GEOMETRIES: dict[str, GeometrySpec] = {
    "base": GeometrySpec("ModernBERT-base: 22 layers, hidden 768, 12 heads", "base", cpu_layers=4),
    "large": GeometrySpec("ModernBERT-large: 28 layers, hidden 1024, 16 heads", "large", cpu_layers=4),
    "small": GeometrySpec(
        "hidden 256, 4 layers, 4 heads, intermediate 384, ModernBERT vocabulary (CPU)", "base",
        dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384),
    ),
    "tiny": GeometrySpec("the test preset: hidden 32, 3 layers, vocabulary 128, window +-8 (smoke tests)", "tiny"),
}


@dataclass(frozen=True)
class ShapeSpec:
    kind: str  # "train" or "infer"
    rows: int  # documents, one per row of transformers' padded batch
    seq_len: int  # padded length
    padding: float  # target padding fraction of the padded batch
    description: str


# Training batches have ~25% padding (the setting); inference batches are unsorted documents padded to the
# longest, ~40% padding. Padding is reported per shape, so the speed-ups can be read against it.
SHAPES: dict[str, dict[str, ShapeSpec]] = {
    "cuda": {
        "train-1024": ShapeSpec("train", 32, 1024, 0.25, "32 x 1024 padded, 25% padding"),
        "train-8192": ShapeSpec("train", 8, 8192, 0.25, "8 x 8192 padded, 25% padding"),
        # transformers runs out of memory at 8 x 8192 on an 80 GB card (its dense MLM logits alone are ~13 GB):
        # half the rows make the 8,192-token comparison measurable in one run.
        "train-8192-x4": ShapeSpec("train", 4, 8192, 0.25, "4 x 8192 padded, 25% padding"),
        "train-8192-64k": ShapeSpec("train", 11, 8192, 0.25, "11 x 8192 padded: >= 64k real tokens"),
        "infer-512": ShapeSpec("infer", 128, 512, 0.4, "128 x 512 padded, 40% padding"),
        "infer-8192": ShapeSpec("infer", 8, 8192, 0.4, "8 x 8192 padded, 40% padding"),
    },
    "cpu": {
        "infer-512": ShapeSpec("infer", 8, 512, 0.4, "8 x 512 padded, 40% padding"),
        "train-512": ShapeSpec("train", 4, 512, 0.25, "4 x 512 padded, 25% padding"),
    },
}


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "ours" or "transformers"
    description: str
    backend: str  # ours: config.attention_backend; transformers: attn_implementation
    overrides: dict = field(default_factory=dict)  # config fields
    attributes: dict = field(default_factory=dict)  # ours: attributes of the encoder (e.g. rope_in_gemm)
    kinds: tuple[str, ...] = ("train", "infer")
    devices: tuple[str, ...] = ("cuda", "cpu")


MODELS: dict[str, ModelSpec] = {
    "ours-varlen": ModelSpec("ours", "unpadded, varlen FlashAttention: FA4 (flash-attn-4) on Hopper/Blackwell when "
                             "installed, else FA2 (flash-attn or torch)", "flash_attention_2", devices=("cuda",)),
    "ours-varlen-fa2": ModelSpec("ours", "unpadded, torch's varlen FlashAttention-2 (varlen_kernel='torch')",
                                 "flash_attention_2", {"varlen_kernel": "torch"}, devices=("cuda",)),
    "ours-varlen-graphs": ModelSpec("ours", "ours-varlen replaying CUDA graphs (cuda_graphs=True; static shapes)",
                                    "flash_attention_2", {"cuda_graphs": True}, devices=("cuda",)),
    "ours-varlen-graphs-cublas": ModelSpec("ours", "ours-varlen-graphs with the MLP on cuBLAS and the geglu op "
                                              "(linear_kernel='torch') instead of quack's fused GEMMs",
                                              "flash_attention_2", {"cuda_graphs": True, "linear_kernel": "torch"},
                                              devices=("cuda",)),
    "ours-varlen-graphs-rope-pass": ModelSpec("ours", "ours-varlen-graphs with RoPE in the attention ops (a pass "
                                              "over qkv) instead of Wqkv's GEMM epilogue (rope_in_gemm=False)",
                                              "flash_attention_2", {"cuda_graphs": True}, {"rope_in_gemm": False},
                                              devices=("cuda",)),
    "ours-sdpa": ModelSpec("ours", "unpadded MLPs, per-document padded sdpa attention", "sdpa"),
    "ours-eager": ModelSpec("ours", "unpadded MLPs, reference eager attention", "eager"),
    "transformers-sdpa": ModelSpec("transformers", "ModernBertForMaskedLM/Model, sdpa, dense MLM head (default)",
                                   "sdpa", {"sparse_prediction": False}),
    "transformers-flex": ModelSpec("transformers", "flex_attention, dense MLM head (default)", "flex_attention",
                                   {"sparse_prediction": False}, devices=("cuda",)),
    "transformers-sdpa-sparse": ModelSpec("transformers", "sdpa with sparse_prediction=True (head on masked only)",
                                          "sdpa", {"sparse_prediction": True}, kinds=("train",)),
    "transformers-eager": ModelSpec("transformers", "eager attention, dense MLM head", "eager",
                                    {"sparse_prediction": False}),
}

DEFAULT_MODELS: dict[str, list[str]] = {
    # transformers-sdpa-sparse is left out of the GPU default to keep the run under ~7 minutes: add it with --models.
    "cuda": ["transformers-sdpa", "transformers-flex", "ours-varlen", "ours-sdpa"],
    "cpu": ["transformers-sdpa", "transformers-sdpa-sparse", "ours-sdpa"],
}
DEFAULT_SHAPES = {"cuda": list(SHAPES["cuda"]), "cpu": ["infer-512"]}  # CPU training is opt-in: --only train-512
DEFAULT_GEOMETRIES = {"cuda": ["base", "large"], "cpu": ["small", "base"]}
STEPS = {"cuda": (3, 10), "cpu": (1, 5), "quick": (1, 2)}  # (warm-up, timed)


# --------------------------------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------------------------------


def geometry_config(name: str, num_layers: int | None = None, device_type: str = "cuda") -> ClinicalModernBertConfig:
    """Our config for a registered geometry, cut to `num_layers` layers if given (on CPU: its `cpu_layers`)."""
    if name not in GEOMETRIES:
        raise ValueError(f"unknown geometry {name!r}; known: {sorted(GEOMETRIES)}")
    spec = GEOMETRIES[name]
    overrides = dict(spec.overrides)
    if num_layers is None and device_type == "cpu":
        num_layers = spec.cpu_layers
    if num_layers is not None:
        overrides["num_hidden_layers"] = num_layers
    return ClinicalModernBertConfig.from_preset(spec.preset, **overrides)


def with_overrides(config: ClinicalModernBertConfig, overrides: dict[str, Any]) -> ClinicalModernBertConfig:
    """A validated copy of `config` with fields replaced; an unknown field is an error, not a silent no-op."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"ClinicalModernBertConfig has no field {key!r} (override {key}={value!r})")
        setattr(config, key, value)
    config.validate()
    return config


def build_ours(config: ClinicalModernBertConfig, kind: str, overrides: dict[str, Any], device: torch.device,
               attributes: dict[str, Any] | None = None) -> torch.nn.Module:
    """THE place our model is built: the masked-LM model for training, the encoder for inference.

    `overrides` carries the backend and any speed options (e.g. `compile_layers`, `mlm_loss_chunk_size`);
    `attributes` are set on the encoder (e.g. `rope_in_gemm`).
    """
    config = with_overrides(config, overrides)
    model_class = ClinicalModernBertForMaskedLM if kind == "train" else ClinicalModernBertModel
    with torch.device(device):
        model = model_class(config)
    for name, value in (attributes or {}).items():
        if not hasattr(model.base_model, name):
            raise ValueError(f"{type(model.base_model).__name__} has no attribute {name!r}")
        setattr(model.base_model, name, value)
    return model


def build_transformers(config: ClinicalModernBertConfig, kind: str, attn_implementation: str,
                       overrides: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """transformers' `ModernBertForMaskedLM` (training) or `ModernBertModel` (inference) of the same geometry."""
    import transformers

    native_config = transformers.ModernBertConfig(**{**config.to_modernbert_dict(), **overrides})
    native_config._attn_implementation = attn_implementation
    model_class = transformers.ModernBertForMaskedLM if kind == "train" else transformers.ModernBertModel
    with torch.device(device):
        return model_class(native_config)


def build_model(spec: ModelSpec, config: ClinicalModernBertConfig, kind: str, weights: dict[str, torch.Tensor],
                device: torch.device, ours_overrides: dict[str, Any]) -> torch.nn.Module:
    """Build one benchmarked model and load the shared weights into it (strictly: same parameters everywhere)."""
    if spec.family == "ours":
        model = build_ours(config, kind, {"attention_backend": spec.backend, **spec.overrides, **ours_overrides},
                           device, spec.attributes)
    else:
        model = build_transformers(config, kind, spec.backend, spec.overrides, device)
    if kind == "infer":  # the encoder alone: drop the head and the "model." prefix
        weights = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    return model


def shared_weights(config: ClinicalModernBertConfig, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Initial weights every model of a geometry loads, kept on the CPU so they never count in a model's memory."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = ClinicalModernBertForMaskedLM(config)
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    del model
    free_memory(device)
    return weights


# --------------------------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------------------------


def free_memory(device: torch.device, cuda_graphs: bool = False) -> None:
    """Give back what the last configuration held, so that the next one runs on an empty card.

    `cuda_graphs`: the configuration replayed CUDA graphs (`cuda_graphs=true`). They keep their memory pool and the
    static inputs they read (the model's parameters among them) until torch's compiler state is reset: without
    the reset, a later transformers run at train-8192-x4, which needs 52 GiB, ran out of memory on an 80 GB card
    after two models with graphs had run. The reset also drops compiled code, so the next configuration compiles
    afresh (its first step, reported apart, takes longer; the timed steps do not change).
    """
    if cuda_graphs and device.type == "cuda":
        torch.compiler.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryProbe:
    """Peak memory of one configuration: CUDA peak allocated, or on CPU the peak RSS growth (Linux only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "rss"
        self.rss_before_kib: int | None = None
        self.allocated_before_gib: float | None = None  # CUDA memory still held from earlier configurations (leaks)

    def start(self) -> None:
        """Call before building the model: the baseline that the peak is measured from."""
        if self.kind == "rss":
            self.rss_before_kib = _proc_status_kib("VmRSS")
        else:
            self.allocated_before_gib = torch.cuda.memory_allocated(self.device) / 2**30
        self.reset_peak()

    def reset_peak(self) -> None:
        """Forget peaks so far (e.g. an fp32 copy made while casting to bf16); what is allocated now still counts."""
        if self.kind == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.rss_before_kib = None

    def peak_gib(self) -> float | None:
        if self.kind == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        peak = _proc_status_kib("VmHWM")
        if self.rss_before_kib is None or peak is None:
            return None
        return max(peak - self.rss_before_kib, 0) / 2**20


def time_steps(step: Callable[[], torch.Tensor | None], warmup: int, steps: int,
               device: torch.device) -> tuple[float, float | None, list[float]]:
    """Run `warmup` untimed steps, then `steps` timed ones. Returns (first step s, first loss, timed step seconds).

    The first step (compilation, optimizer state, autotuning) is timed on its own and never in the median.
    """
    synchronize(device)
    begin = time.perf_counter()
    out = step()
    first_loss = float(out) if out is not None else None
    synchronize(device)
    first_step_s = time.perf_counter() - begin
    for _ in range(warmup - 1):
        step()
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        synchronize(device)
        times = [start.elapsed_time(end) / 1000 for start, end in events]
    else:
        times = []
        for _ in range(steps):
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return first_step_s, first_loss, times


def make_step(model: torch.nn.Module, spec: ModelSpec, kind: str, batch: DocumentBatch, device: torch.device,
              dtype: torch.dtype) -> Callable[[], torch.Tensor | None]:
    """A closure running one training step (fwd + bwd + AdamW) or one inference forward on `batch`."""
    if kind == "infer":
        model.to(dtype).eval()
        inputs = batch.padded_inputs(device, with_labels=False)

        def infer_step() -> None:
            with torch.inference_mode():
                model(**inputs)

        return infer_step

    model.train()
    packed = spec.family == "ours"
    inputs = batch.packed_inputs(device, True) if packed else batch.padded_inputs(device, True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def autocast() -> contextlib.AbstractContextManager:
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def train_step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return train_step


# --------------------------------------------------------------------------------------------------------------------
# One configuration, and the whole run
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RunSettings:
    device: torch.device
    dtype: torch.dtype
    warmup: int
    steps: int
    peak_tflops: float | None
    ours_overrides: dict[str, Any]
    seed: int = 0


# Config fields recorded with every result: what actually ran (missing fields are recorded as None).
RECORDED_CONFIG_FIELDS = {
    "ours": ("attention_backend", "local_attention_kernel", "linear_kernel", "compile_layers", "mlm_loss_chunk_size",
             "residual_dtype", "sparse_prediction", "cuda_graphs", "num_hidden_layers"),
    "transformers": ("_attn_implementation", "sparse_prediction", "num_hidden_layers"),
}


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_config(name: str, spec: ModelSpec, geometry: str, config: ClinicalModernBertConfig,
               weights: dict[str, torch.Tensor], shape_name: str, shape: ShapeSpec, batch: DocumentBatch,
               settings: RunSettings) -> dict[str, Any]:
    """Time one (geometry, shape, model); an OOM or any error is recorded, never raised."""
    result: dict[str, Any] = {
        "geometry": geometry, "shape": shape_name, "kind": shape.kind, "model": name, "family": spec.family,
        "backend": spec.backend, "description": spec.description, **batch.summary(),
    }
    if spec.family == "ours":
        result["config_overrides"] = {"attention_backend": spec.backend, **spec.overrides, **settings.ours_overrides}
    flops = (training_flops(config, batch.lengths, batch.masked_tokens) if shape.kind == "train"
             else inference_flops(config, batch.lengths))
    result["useful_flops"] = flops.to_dict()
    probe = MemoryProbe(settings.device)
    probe.start()
    try:
        model = build_model(spec, config, shape.kind, weights, settings.device, settings.ours_overrides)
        result["model_config"] = {key: getattr(model.config, key, None) for key in RECORDED_CONFIG_FIELDS[spec.family]}
        if spec.family == "ours":
            result["model_config"]["rope_in_gemm"] = model.base_model.rope_in_gemm
        step = make_step(model, spec, shape.kind, batch, settings.device, settings.dtype)
        probe.reset_peak()
        first_step_s, first_loss, times = time_steps(step, settings.warmup, settings.steps, settings.device)
    except Exception as error:  # noqa: BLE001 - one failing configuration must not end the run
        result["status"] = "OOM" if _is_oom(error) else "error"
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]
        logger.warning(f"{geometry} {shape_name} {name}: {result['error']}")
        return result
    median = statistics.median(times)
    result.update(
        status="ok", first_step_s=first_step_s, first_loss=first_loss, step_times_s=times, median_step_s=median,
        min_step_s=min(times),
        tokens_per_s=batch.real_tokens / median, padded_tokens_per_s=batch.padded_tokens / median,
        achieved_tflops=flops.total / median / 1e12, peak_memory_gib=probe.peak_gib(), memory_kind=probe.kind,
        allocated_before_gib=probe.allocated_before_gib,
    )
    result["mfu"] = result["achieved_tflops"] / settings.peak_tflops if settings.peak_tflops else None
    return result


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Speed-up of every result over transformers+sdpa on the same geometry and shape (None if that did not run)."""
    baseline = {(r["geometry"], r["shape"]): r.get("tokens_per_s") for r in results if r["model"] == BASELINE}
    for r in results:
        reference = baseline.get((r["geometry"], r["shape"]))
        r["speedup_vs_" + BASELINE.replace("-", "_")] = (
            r["tokens_per_s"] / reference if r.get("tokens_per_s") and reference else None
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def run(geometries: list[str], shapes: dict[str, ShapeSpec], models: list[str], settings: RunSettings,
        num_layers: int | None = None, on_result: Callable[[list[dict[str, Any]]], None] | None = None,
        deadline: float | None = None) -> list[dict[str, Any]]:
    """Every (geometry, shape, model) configuration, geometry by geometry (weights built once per geometry).

    `on_result` sees the results so far after each configuration (to save partial results); once
    `time.monotonic()` passes `deadline`, the remaining configurations are recorded as skipped, not run.
    """
    results: list[dict[str, Any]] = []
    total = len(geometries) * sum(
        1 for s in shapes.values() for m in models if s.kind in MODELS[m].kinds and settings.device.type in
        MODELS[m].devices)
    done = 0
    for geometry in geometries:
        config = geometry_config(geometry, num_layers, settings.device.type)
        default_layers = geometry_config(geometry).num_hidden_layers
        label = geometry if config.num_hidden_layers == default_layers else f"{geometry}/{config.num_hidden_layers}L"
        weights = shared_weights(config, settings.device, settings.seed)
        for shape_name, shape in shapes.items():
            lengths = sample_document_lengths(shape.rows, shape.seq_len, shape.padding, seed=settings.seed)
            batch = build_batch(lengths, shape.seq_len, config.vocab_size, config.pad_token_id, config.mask_token_id,
                                mask_rate=0.3 if shape.kind == "train" else 0.0, seed=settings.seed)
            for name in models:
                spec = MODELS[name]
                if shape.kind not in spec.kinds or settings.device.type not in spec.devices:
                    continue
                done += 1
                if deadline is not None and time.monotonic() > deadline:
                    result = {"geometry": label, "shape": shape_name, "kind": shape.kind, "model": name,
                              "family": spec.family, "backend": spec.backend, **batch.summary(),
                              "status": "skipped", "error": "time budget (--max-minutes) used up"}
                else:
                    result = run_config(name, spec, label, config, weights, shape_name, shape, batch, settings)
                    graphs = result.get("config_overrides", {}).get("cuda_graphs") is True
                    free_memory(settings.device, cuda_graphs=graphs)
                results.append(result)
                add_speedups(results)
                speed = f"{result['tokens_per_s']:,.0f} tok/s" if result["status"] == "ok" else result["status"]
                logger.info(f"[{done}/{total}] {label} {shape_name} {name}: {speed}")
                if on_result is not None:
                    on_result(results)
        del weights
        free_memory(settings.device)
    return results


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------


def format_table(results: list[dict[str, Any]]) -> str:
    """Rows: shape x geometry x model; columns: real tok/s, speed-up over transformers+sdpa, peak GiB, MFU."""
    speedup_key = "speedup_vs_" + BASELINE.replace("-", "_")
    headers = ["shape", "geometry", "model", "real tok/s", f"vs {BASELINE}", "peak GiB", "MFU", "1st step s"]
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append([r["shape"], r["geometry"], r["model"], r["status"], "-", "-", "-", "-"])
            continue
        rows.append([
            r["shape"], r["geometry"], r["model"], f"{r['tokens_per_s']:,.0f}",
            f"{r[speedup_key]:.2f}x" if r.get(speedup_key) else "-",
            f"{r['peak_memory_gib']:.2f}" if r.get("peak_memory_gib") is not None else "-",
            f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-",
            f"{r['first_step_s']:.1f}",
        ])
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


def varlen_kernel_auto(device: torch.device) -> str | None:
    """What `varlen_kernel="auto"` picks on this device for a head_dim of 64 (every geometry here), or None."""
    if device.type != "cuda":
        return None
    from modeling_clinical_modernbert import VARLEN_KERNEL_NAMES, resolve_varlen_kernel

    return VARLEN_KERNEL_NAMES[resolve_varlen_kernel("auto", device, head_dim=64, training_dropout=False)]


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def format_notes(report: dict[str, Any]) -> str:
    shapes = {}
    for r in report["results"]:
        shapes.setdefault(r["shape"], r)
    lines = [f"device: {report['device_name']} | torch {report['torch']} | transformers {report['transformers']} | "
             f"dtype {report['settings']['dtype']} | {report['settings']['warmup']} warm-up + "
             f"{report['settings']['steps']} timed steps (median)"]
    if report.get("varlen_kernel_auto"):
        lines.append(f"ours-varlen attention kernels: {report['varlen_kernel_auto']} "
                     f"(flash-attn-4 {report.get('flash_attn_4') or 'not installed'})")
    for name, r in shapes.items():
        lines.append(f"{name}: {r['rows']} docs, {r['real_tokens']:,} real of {r['padded_tokens']:,} padded tokens "
                     f"({100 * r['padding_fraction']:.1f}% padding), {r['masked_tokens']:,} masked; "
                     f"docs {r['min_doc']}..{r['max_doc']} tokens")
    ceiling = report.get("matmul_ceiling_tflops")
    peak = report["settings"]["peak_tflops"]
    lines.append(
        "MFU = useful FLOPs (real tokens, attention within documents and windows, MLM head on masked tokens only) "
        "/ time / peak, for EVERY model (bench/flops.py); "
        + (f"peak {peak:g} TFLOP/s" if peak else "no peak known: pass --peak-tflops")
        + (f"; measured matmul ceiling {ceiling:.3g} TFLOP/s" if ceiling else "")
    )
    memory = "CUDA peak allocated" if report["settings"]["device"] == "cuda" else "peak RSS growth (approximate)"
    lines.append("transformers-sdpa/-flex: as users get it (dense MLM head over every position); "
                 "transformers-sdpa-sparse (--models): config.sparse_prediction=True. "
                 f"Training: ours packed, transformers padded; inference: both padded. Memory: {memory}.")
    return "\n".join(lines)


def _parse_list(value: str | None, known: dict | list, what: str) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; known: {sorted(known)}")
    return names


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--ours-config expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as compile_layers=off
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up + 2 timed steps")
    parser.add_argument("--only", help=f"comma-separated shapes (cuda: {','.join(SHAPES['cuda'])}; cpu: "
                                       f"{','.join(SHAPES['cpu'])}); default: every cuda shape, cpu infer-512")
    parser.add_argument("--geometries", help=f"comma-separated, from {','.join(GEOMETRIES)}")
    parser.add_argument("--models", help=f"comma-separated, from {','.join(MODELS)}")
    parser.add_argument("--num-layers", type=int,
                        help="cut every geometry to this many layers (cpu: base and large default to 4)")
    parser.add_argument("--warmup", type=int, help="untimed steps (default: cuda 3, cpu 1, quick 1)")
    parser.add_argument("--steps", type=int, help="timed steps, median reported (default: cuda 10, cpu 5, quick 2)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on cuda (autocast for training, "
                                                                  "bf16 weights for inference), fp32 on cpu")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: by device name, H100/H200 989)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--ours-config", type=_parse_override, action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of our config, e.g. compile_layers=off (repeatable)")
    parser.add_argument("--max-minutes", type=float, help="skip (and record as skipped) configurations that would "
                                                          "start after this many minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write every number to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available; use --device cpu")
    device = torch.device(device_type)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    only = _parse_list(args.only, SHAPES[device.type], f"shapes for {device.type}") or DEFAULT_SHAPES[device.type]
    shapes = {name: SHAPES[device.type][name] for name in only}
    geometries = _parse_list(args.geometries, GEOMETRIES, "geometries") or DEFAULT_GEOMETRIES[device.type]
    models = _parse_list(args.models, MODELS, "models") or DEFAULT_MODELS[device.type]
    num_layers = args.num_layers
    warmup, steps = STEPS["quick" if args.quick else device.type]
    warmup, steps = args.warmup or warmup, args.steps or steps
    if warmup < 1 or steps < 1:
        raise SystemExit(f"--warmup={warmup} and --steps={steps} must be >= 1")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    name = device_name(device)
    peak = args.peak_tflops if args.peak_tflops is not None else (
        default_peak_tflops(name) if device.type == "cuda" else None)
    settings = RunSettings(device, dtype, warmup, steps, peak, dict(args.ours_config), args.seed)

    import transformers

    logger.info(f"{name}: geometries {geometries}, shapes {list(shapes)}, models {models}")
    ceiling = measure_matmul_tflops(device, dtype, 8192 if device.type == "cuda" else 1024)
    report = {
        "device": device.type, "device_name": name, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "varlen_kernel_auto": varlen_kernel_auto(device), "flash_attn_4": package_version("flash-attn-4"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "bench.bench", *(argv or sys.argv[1:])]),
        "matmul_ceiling_tflops": ceiling,
        "settings": {"device": device.type, "dtype": str(dtype).replace("torch.", ""), "warmup": warmup,
                     "steps": steps, "peak_tflops": peak, "num_layers": num_layers, "threads":
                     torch.get_num_threads() if device.type == "cpu" else None, "seed": args.seed,
                     "ours_overrides": settings.ours_overrides, "geometries": geometries, "models": models,
                     "shapes": {k: vars(v) for k, v in shapes.items()}, "max_minutes": args.max_minutes},
        "complete": False,
        "results": [],
    }

    def save(results: list[dict[str, Any]]) -> None:  # after every configuration: a killed run keeps its numbers
        report["results"] = results
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))

    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    results = run(geometries, shapes, models, settings, num_layers, on_result=save, deadline=deadline)
    report["complete"] = True
    save(results)
    if args.out:
        logger.info(f"wrote {args.out}")
    print(format_notes(report))
    print(format_table(results))
    return report


if __name__ == "__main__":
    main()
