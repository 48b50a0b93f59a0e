"""Model FLOPs utilization: the share of the device's peak dense matrix-multiply throughput that the
training step's model FLOPs (GPT.flops_per_token) use. The peaks are the vendors' dense (no
sparsity) figures, because a figure against the 2x "with sparsity" peak would be half as honest."""

from __future__ import annotations

import torch

# Dense peak FLOP/s per GPU by torch.cuda.get_device_name() fragment, for bf16 and for TF32 (what
# float32 matmuls run as with allow_tf32). The first fragment that matches wins, so the more
# specific names come first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989e12, "float32": 494e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    ("H100 NVL", {"bfloat16": 835e12, "float32": 418e12}),
    ("H100", {"bfloat16": 989e12, "float32": 494e12}),  # SXM (HBM3)
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
]


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def peak_flops(name: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one device for the dtype matmuls run in, or None when not in the table."""
    for fragment, peaks in PEAK_FLOPS:
        if fragment in name:
            return peaks["bfloat16" if dtype == "bfloat16" else "float32"]
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None, devices: int = 1) -> float | None:
    """Achieved model FLOP/s over the peak of all devices that produced tokens_per_s; None if unknown."""
    if peak is None or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak * devices)
