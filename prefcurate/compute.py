"""Device and precision of the models a stage scores or generates with (`ComputeConfig`).

One resolution for every stage, so `auto` means the same everywhere: the first GPU when CUDA
is there, else the CPU; bf16 on a bf16-capable GPU, else fp32. bf16 keeps the fp32 weights and
runs the forward under autocast: matmuls in bf16, while the log-softmax (`logps.at_least_fp32`),
the summed log-probs, losses, the jvp IF and the validation gradient stay fp32, because autocast
leaves parameters and their gradients in their own dtype. fp64 casts the model to float64, the
precision `prefcurate verify --float64` checks in.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import torch

from prefcurate.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """`auto|cpu|cuda|cuda:N` as a torch device; a GPU that is not there is a ConfigError."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"compute.device={device} but CUDA is not available here (torch {torch.__version__}, "
                              f"built for CUDA {torch.version.cuda}); set compute.device=cpu or auto")
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"compute.device={device} but this machine has {torch.cuda.device_count()} GPU(s); "
                              "pick cuda:0 … cuda:N-1")
        resolved = torch.device("cuda", index)
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """`auto|fp32|bf16|fp64` for `device`: auto picks bf16 on a bf16-capable GPU, fp32 elsewhere."""
    if dtype == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return dtype


def resolve(compute: Any) -> tuple[torch.device, str]:
    """(device, dtype name) of a ComputeConfig."""
    device = resolve_device(compute.device)
    return device, resolve_dtype(compute.dtype, device)


def place(model: torch.nn.Module, compute: Any) -> torch.nn.Module:
    """`model` on the configured device, cast to float64 for fp64 (bf16 and fp32 keep fp32 weights)."""
    device, dtype = resolve(compute)
    if dtype == "fp64":
        model = model.to(torch.float64)
    return model.to(device)


def autocast(compute: Any) -> ContextManager:
    """bf16 autocast on the configured device for dtype bf16; nothing for fp32/fp64."""
    device, dtype = resolve(compute)
    if dtype != "bf16":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# The config fields of a stage that loads a model to score or generate with (StageSpec.reads).
READS = ("compute.device", "compute.dtype")
