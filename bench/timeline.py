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
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train.profiling import format_timelines, load_trace, step_timelines  # noqa: E402 - the logic lives there


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
