"""A rough estimate of training time from the network's size, told before a run on the CPU starts (the
progress bar measures the real time once it runs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def network_gflop_per_patch(configuration: Mapping[str, Any], num_classes: int = 5) -> float:
    """Forward GFLOP of nnU-Net's plain 2D U-Net for one patch (convolutions only; multiply-add = 2 FLOP)."""
    arch = configuration["architecture"]["arch_kwargs"]
    features = list(arch["features_per_stage"])
    strides = [list(s) for s in arch["strides"]]
    kernels = [list(k) for k in arch["kernel_sizes"]]
    n_conv = list(arch["n_conv_per_stage"])
    n_conv_decoder = list(arch["n_conv_per_stage_decoder"])
    size = [int(p) for p in configuration["patch_size"]]
    areas, channels, flop = [], 1, 0.0
    for stage, f in enumerate(features):
        size = [max(1, s // st) for s, st in zip(size, strides[stage])]
        area = math.prod(size)
        areas.append(area)
        k = math.prod(kernels[stage])
        flop += 2 * k * channels * f * area + (n_conv[stage] - 1) * 2 * k * f * f * area
        channels = f
    for stage in range(len(features) - 2, -1, -1):
        f, area, k = features[stage], areas[stage], math.prod(kernels[stage])
        flop += 2 * math.prod(strides[stage + 1]) * features[stage + 1] * f * area  # transposed convolution
        flop += 2 * k * 2 * f * f * area + (n_conv_decoder[stage] - 1) * 2 * k * f * f * area
        flop += 2 * f * num_classes * area  # segmentation head
    return flop / 1e9


# Effective training throughput (forward + backward + augmentation), GFLOP/s. Calibrated roughly: the
# 20.6 M-parameter default network runs ~130 GFLOP/s forward on 2 AVX-512 cores; training is ~3x the forward
# cost and less efficient. GPUs: a mid-range CUDA card with mixed precision.
_CPU_GFLOPS_PER_CORE = 25.0
_GPU_GFLOPS = 8000.0
_AUGMENTATION_S_PER_SAMPLE = 0.03  # CPU time of nnU-Net's spatial and intensity augmentation per 2D sample (measured)


def estimate_seconds_per_iteration(
    configuration: Mapping[str, Any], device_type: str, cpu_cores: int = 1, batch_size: int | None = None
) -> float:
    """A rough estimate of one training iteration's time (the progress bar measures the real one)."""
    batch = int(batch_size or configuration.get("batch_size") or 2)
    work = 3.0 * network_gflop_per_patch(configuration) * batch  # forward + backward ~ 3 forwards
    if device_type == "cpu":
        return work / (_CPU_GFLOPS_PER_CORE * max(1, cpu_cores)) + _AUGMENTATION_S_PER_SAMPLE * batch
    return work / _GPU_GFLOPS + _AUGMENTATION_S_PER_SAMPLE * batch / 8  # augmentation in worker processes
