"""Where the time of one training step of ours goes: a torch.profiler table of the costliest CUDA kernels.

    python -m bench.profile_step --geometry base --shape train-1024 [--ours-config compile_layers=off] \
        [--trace step.json.gz]

Prints the step time with and without `torch.compile` of the blocks around attention, then the kernel table of the
configuration given, grouped into matmuls, attention, elementwise/normalisation and the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench import SHAPES, _parse_override, build_ours, geometry_config  # noqa: E402
from bench.data import build_batch, sample_document_lengths  # noqa: E402
from train.profiling import STEP_NAME, format_timelines, kernel_summary, load_trace, step_timelines  # noqa: E402


def make_step(overrides: dict, geometry: str, shape_name: str, attributes: dict | None = None):
    shape = SHAPES["cuda"][shape_name]
    config = geometry_config(geometry)
    model = build_ours(config, "train", {"attention_backend": "flash_attention_2", **overrides}, torch.device("cuda"),
                       attributes)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    lengths = sample_document_lengths(shape.rows, shape.seq_len, shape.padding, seed=0)
    batch = build_batch(lengths, shape.seq_len, config.vocab_size, config.pad_token_id, config.mask_token_id)
    inputs = batch.packed_inputs("cuda", with_labels=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, batch.real_tokens


def time_step(step, warmup: int = 5, steps: int = 10) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default="base")
    parser.add_argument("--shape", default="train-1024")
    parser.add_argument("--ours-config", type=_parse_override, action="append", default=[])
    parser.add_argument("--encoder-attribute", type=_parse_override, action="append", default=[], metavar="KEY=VALUE",
                        help="an attribute of the encoder for the profiled step (e.g. rope_in_gemm=false)")
    parser.add_argument("--profile-only", action="store_true",
                        help="skip the step times with compile_layers off and on; profile only")
    parser.add_argument("--top", type=int, default=20, help="how many of the costliest kernels to list")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--trace", type=Path, help="also write a Chrome trace (.json or .json.gz) of the profiled "
                        "steps, CPU side included, and print their timelines (see bench/timeline.py)")
    args = parser.parse_args()
    overrides, attributes = dict(args.ours_config), dict(args.encoder_attribute)

    report = {"geometry": args.geometry, "shape": args.shape, "step_ms": {}, "encoder_attributes": attributes}
    for mode in () if args.profile_only else ("off", "on"):
        step, tokens = make_step({**overrides, "compile_layers": mode}, args.geometry, args.shape)
        ms = time_step(step)
        report["step_ms"][f"compile_layers={mode}"] = ms
        print(f"compile_layers={mode}: {ms:.1f} ms/step, {tokens / ms * 1e3:,.0f} real tokens/s")
        del step
        torch.cuda.empty_cache()

    step, tokens = make_step({"compile_layers": "on", **overrides}, args.geometry, args.shape, attributes)
    ms = time_step(step, warmup=5, steps=10)
    print(f"profiled configuration: {ms:.1f} ms/step, {tokens / ms * 1e3:,.0f} real tokens/s")
    steps = 3
    activities = [torch.profiler.ProfilerActivity.CUDA]
    if args.trace:  # the CPU side too: which launch each kernel waited for (bench.timeline)
        activities.append(torch.profiler.ProfilerActivity.CPU)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            with torch.profiler.record_function(STEP_NAME):
                step()
        torch.cuda.synchronize()
    if args.trace:
        profiler.export_chrome_trace(str(args.trace))  # gzipped for a .gz name
        print(f"\nstep timelines ({args.trace}; bench/timeline.py):")
        print(format_timelines(step_timelines(load_trace(args.trace))))
    # kernels only: ranges (our train_step, the optimizer's) also show on the device side as annotations
    events = [e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
              and not getattr(e, "is_user_annotation", False)]
    summary = kernel_summary(events, steps)
    total = summary["kernel_ms_per_step"] or 1.0
    print(f"\nGPU time by kernel group ({steps} steps, compile_layers=on, {total:.1f} ms of kernels per step; "
          f"attention calls per step {summary['attention_calls_per_step']}):")
    for group, ms in summary["groups_ms_per_step"].items():
        print(f"  {group:<32} {ms:8.2f} ms/step  {100 * ms / total:5.1f}%")
    print("\ncostliest kernels:")
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:args.top]
    for event in top:
        print(f"  {event.self_device_time_total / steps / 1e3:8.2f} ms/step  {event.count // steps:5d}x  "
              f"{event.key[:120]}")
    report.update(summary)
    report["top_kernels"] = [{"name": e.key, "ms_per_step": e.self_device_time_total / steps / 1e3,
                              "calls": e.count // steps} for e in top]
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
