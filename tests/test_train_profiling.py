"""`train.profiling`: how a profile's CUDA kernels are grouped and how attention calls are counted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from train.profiling import kernel_group, kernel_summary


def event(name: str, ms_per_step: float, calls_per_step: int, steps: int = 3, device=torch.autograd.DeviceType.CUDA):
    """A `profiler.key_averages()` row: totals over `steps` steps, in microseconds."""
    return SimpleNamespace(key=name, self_device_time_total=ms_per_step * 1e3 * steps, count=calls_per_step * steps,
                           device_type=device, is_user_annotation=False)


def test_summary_groups_kernels_and_counts_each_attention_kernel_once_per_layer():
    """Kernel names from a real train-1024 profile: FA4 on 8 global layers, the model's local-attention kernels on
    14 local ones (whose backward is two kernels: one call counted). CPU operator rows never count."""
    events = [
        event("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN", 7.0, 85),
        event("kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at_", 1.5, 8),
        event("kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90_object_at_", 2.8, 8),
        event("_local_attention_fwd_kernel", 1.0, 14),
        event("_local_attention_bwd_dq_kernel", 2.0, 14),
        event("_local_attention_bwd_dkdv_kernel", 2.7, 14),
        event("triton_per_fused__to_copy_add_native_layer_norm_3", 1.0, 20),
        event("aten::mm", 99.0, 85, device=torch.autograd.DeviceType.CPU),
    ]
    summary = kernel_summary(events, steps=3)
    assert summary["attention_calls_per_step"] == {"forward": 22.0, "backward": 22.0}
    groups = summary["groups_ms_per_step"]
    assert groups["attention"] == pytest.approx(1.5 + 2.8 + 1.0 + 2.0 + 2.7)
    assert groups["matmul"] == pytest.approx(7.0)
    assert groups["fused elementwise (compiled)"] == pytest.approx(1.0)
    assert summary["kernel_ms_per_step"] == pytest.approx(18.0)
    assert list(groups)[0] == "attention"  # costliest first
    assert kernel_group("_rotary_kernel") == "other"
