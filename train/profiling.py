"""Group the CUDA kernels of a `torch.profiler` run into what a transformer step spends its time on.

Shared by the Trainer's `--profile_steps` (`train.run.ProfilerCallback`) and `bench/profile_step.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
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
