"""What a profiled training step spends its time on: CUDA kernels by group, and the device's idle time.

Shared by the Trainer's `--profile_steps` (`train.run.ProfilerCallback`), `bench/profile_step.py` and
`bench/timeline.py` (whose docstring explains the step timelines).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KERNEL_GROUPS = {  # substring of a kernel name -> group; first match wins
    "nccl": "communication (NCCL)",
    "flash": "attention", "fmha": "attention", "attn": "attention", "_local_attention": "attention",
    "gemm": "matmul", "sm90_xmma": "matmul", "cutlass": "matmul", "nvjet": "matmul", "cublas": "matmul",
    "triton": "fused elementwise (compiled)", "elementwise": "elementwise", "vectorized": "elementwise",
    "layer_norm": "normalisation", "reduce": "reductions", "index": "indexing/gather", "scatter": "indexing/gather",
    "adam": "optimizer", "foreach": "optimizer", "memcpy": "copies", "memset": "copies", "cat": "copies",
}


def kernel_group(name: str) -> str:
    lowered = name.lower()
    return next((group for key, group in KERNEL_GROUPS.items() if key in lowered), "other")


def kernel_summary(events: Iterable[Any], steps: int) -> dict[str, Any]:
    """Per-step kernel time by group, and how often the attention kernels ran, from `profiler.key_averages()`.

    Only CUDA kernels count (operators also report their kernels' time; user ranges such as DDP's forward are
    annotations). `attention_calls` shows, for example, whether backward recomputes the attention forward: a
    model of L layers runs the forward kernel L times per step if not, 2L if so.
    """
    kernels = [e for e in events if str(e.device_type).endswith("CUDA") and not getattr(e, "is_user_annotation", False)]
    groups: dict[str, float] = {}
    for event in kernels:
        group = kernel_group(event.key)
        groups[group] = groups.get(group, 0.0) + event.self_device_time_total / 1e3 / steps
    forward = sum(e.count for e in kernels if ("flash_fwd" in e.key and "splitkv_combine" not in e.key)
                  or "_local_attention_fwd" in e.key)
    # FA2: flash_bwd_dq_dk_dv_loop...; FA4: flash_bwd_sm90/sm100 (its pre- and postprocess kernels are separate);
    # the model's local-attention kernels: one dq and one dk/dv kernel, counted once
    backward = sum(e.count for e in kernels if "flash_bwd_dq_dk_dv" in e.key or "flash_bwd_sm" in e.key
                   or "_local_attention_bwd_dkdv" in e.key)
    return {
        "kernel_ms_per_step": sum(groups.values()),
        "groups_ms_per_step": dict(sorted(groups.items(), key=lambda item: -item[1])),
        "attention_calls_per_step": {"forward": forward / steps, "backward": backward / steps},
    }


# --------------------------------------------------------------------------------------------------------------------
# Step timelines: idle device time between kernels, and how much of it waited for the CPU (bench/timeline.py)
# --------------------------------------------------------------------------------------------------------------------


DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
STEP_NAME = "train_step"


@dataclass
class StepTimeline:
    """One step's device timeline, in milliseconds (`bench/timeline.py` explains each field)."""

    span_ms: float
    busy_ms: float
    idle_ms: float
    idle_waiting_for_cpu_ms: float
    device_events: int
    copies: int
    copies_ms: float
    memsets: int
    memsets_ms: float
    cpu_lead_ms: float | None


def load_trace(path: str | Path) -> list[dict[str, Any]]:
    """The `traceEvents` of a Chrome trace file (`.json` or `.json.gz`)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        try:
            trace = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error}): not a Chrome trace of torch.profiler") from error
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        raise ValueError(f"{path}: no 'traceEvents' list: not a Chrome trace of torch.profiler")
    return events


def _is_copy(event: dict[str, Any]) -> bool:
    name = event["name"].lower()
    return event.get("cat") == "gpu_memcpy" or name.startswith("memcpy")


def step_windows(events: list[dict[str, Any]], step_name: str = STEP_NAME,
                 boundary: str | None = None) -> list[tuple[float, float]]:
    """CPU time windows (start, end in us) of the steps: the `step_name` ranges, or, given `boundary` (the name of
    a range each step ends with, such as `Optimizer.zero_grad#AdamW.zero_grad`), from the end of one to the end of
    the next (the work before the first boundary is an incomplete step, left out)."""
    name = boundary or step_name
    ranges = sorted((e for e in events if e.get("ph") == "X" and e.get("name") == name
                     and e.get("cat") in ("user_annotation", "cpu_op")), key=lambda e: e["ts"])
    if not ranges or (boundary and len(ranges) < 2):
        raise ValueError(f"{'fewer than two' if ranges else 'no'} '{name}' ranges in the trace: record each step "
                         f"under torch.profiler.record_function({STEP_NAME!r}) (bench.profile_step --trace does)")
    if boundary is None:
        return [(r["ts"], r["ts"] + r["dur"]) for r in ranges]
    ends = [r["ts"] + r["dur"] for r in ranges]
    return list(zip(ends, ends[1:]))


def step_timelines(events: list[dict[str, Any]], step_name: str = STEP_NAME,
                   boundary: str | None = None) -> list[StepTimeline]:
    """One `StepTimeline` per step (see `step_windows`), in order."""
    windows = step_windows(events, step_name, boundary)
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    device = sorted((e for e in events if e.get("cat") in DEVICE_CATEGORIES and e.get("ph") == "X"),
                    key=lambda e: e["ts"])
    # a device event belongs to the step whose CPU window launched it
    by_step: list[list[dict[str, Any]]] = [[] for _ in windows]
    for event in device:
        launch = launches.get(event.get("args", {}).get("correlation"))
        if launch is None:
            continue
        for index, (start, end) in enumerate(windows):
            if start <= launch["ts"] < end:
                by_step[index].append(event)
                break
    for step_events in by_step:
        if not step_events:
            raise ValueError("a step launched no device work: was CUDA activity profiled?")
    timelines = []
    for step_events in by_step:
        busy = idle = waiting = 0.0
        end = step_events[0]["ts"]
        for event in step_events:
            gap = event["ts"] - end
            if gap > 0:
                idle += gap
                launch = launches[event["args"]["correlation"]]
                if launch["ts"] + launch.get("dur", 0) > end:  # the device was done before the CPU launched this
                    waiting += min(gap, launch["ts"] + launch.get("dur", 0) - end)
            event_end = event["ts"] + event["dur"]
            busy += max(0.0, event_end - max(event["ts"], end))
            end = max(end, event_end)
        last = step_events[-1]
        last_launch = launches[last["args"]["correlation"]]
        copies = [e for e in step_events if _is_copy(e)]
        memsets = [e for e in step_events if e.get("cat") == "gpu_memset" or "memset" in e["name"].lower()]
        timelines.append(StepTimeline(
            span_ms=(end - step_events[0]["ts"]) / 1e3, busy_ms=busy / 1e3, idle_ms=idle / 1e3,
            idle_waiting_for_cpu_ms=waiting / 1e3, device_events=len(step_events),
            copies=len(copies), copies_ms=sum(e["dur"] for e in copies) / 1e3,
            memsets=len(memsets), memsets_ms=sum(e["dur"] for e in memsets) / 1e3,
            cpu_lead_ms=(last["ts"] - last_launch["ts"]) / 1e3,
        ))
    return timelines


def format_timelines(timelines: list[StepTimeline]) -> str:
    header = ("step  span ms  busy ms  idle ms  waiting for CPU ms  device events  copies (ms)    memsets (ms)   "
              "CPU lead ms")
    lines = [header]
    for index, t in enumerate(timelines):
        lines.append(f"{index:>4}  {t.span_ms:7.2f}  {t.busy_ms:7.2f}  {t.idle_ms:7.2f}  "
                     f"{t.idle_waiting_for_cpu_ms:18.2f}  {t.device_events:13d}  {t.copies:4d} ({t.copies_ms:5.2f})  "
                     f"{t.memsets:4d} ({t.memsets_ms:5.2f})  {t.cpu_lead_ms:11.2f}")
    return "\n".join(lines)
