"""Where a training step's GPU time goes *between* kernels: idle time, and how much of it waited for the CPU.

    python -m bench.profile_step --ours-config cuda_graphs=true --trace step.json.gz   # on the GPU machine
    python -m bench.timeline step.json.gz                                              # anywhere

Reads a Chrome trace of `torch.profiler` with CPU and CUDA activities, whose steps are `train_step` ranges (what
`bench.profile_step --trace` records). Per step:

- **span**: from the step's first device event (kernel, copy or memset) to the end of its last;
- **busy**: the time some device event runs (overlapping events count once);
- **idle**: span - busy; **waiting for the CPU**: the idle time before events that were launched (the end of their
  CUDA runtime call: `cudaLaunchKernel`, `cudaGraphLaunch`, `cudaMemcpyAsync`, ...) after the device had run
  out of work. The rest of the idle time is the device's own: gaps between dependent kernels, inside CUDA graphs too;
- **copies** and **memsets**: device-to-device copies and memsets, by count and time (CUDA graph trees copy the
  inputs a graph does not own before each replay; cuBLAS clears a workspace before some matmuls).
- **CPU lead**: how far ahead of the device the CPU launched the step's last event. A lead that stays positive means
  the device never starves in steady state.

The profiler's own overhead slows the CPU side: the first profiled step can wait for the CPU where an unprofiled
run does not.
"""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
STEP_NAME = "train_step"


@dataclass
class StepTimeline:
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
        trace = json.load(handle)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="Chrome trace (.json or .json.gz) with 'train_step' ranges")
    parser.add_argument("--boundary", help="steps end with ranges of this name instead of being 'train_step' "
                        "ranges (e.g. Optimizer.zero_grad#AdamW.zero_grad, for traces recorded without them)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    timelines = step_timelines(load_trace(args.trace), boundary=args.boundary)
    print(json.dumps([asdict(t) for t in timelines], indent=2) if args.json else format_timelines(timelines))


if __name__ == "__main__":
    main()
