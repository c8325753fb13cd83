"""Where a role's model runs: the spec's ``device`` and ``dtype`` turned into torch objects.

``auto`` means the GPU Ray gave the actor (``num_gpus > 0`` makes CUDA visible to it), else the CPU:
the same spec runs on a GPU cluster and on a laptop. Asking for CUDA where none is visible is a
one-line error naming the field, not a CUDA traceback from deep inside a model.
"""

from __future__ import annotations

import torch

from vbugs_ray.errors import SpecError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(role: str, role_spec) -> torch.device:
    wanted = role_spec.device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecError(f"{role}.device", f"asks for {wanted} but no CUDA device is visible here; "
                            f"give the role num_gpus > 0 on a GPU node, or set device: auto or cpu")
        index = int(wanted.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise SpecError(f"{role}.device", f"asks for {wanted} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if wanted == "mps" and not torch.backends.mps.is_available():
        raise SpecError(f"{role}.device", "asks for mps but it is not available here; set device: auto or cpu")
    return torch.device(wanted)


def resolve_dtype(role: str, role_spec, device: torch.device, progress=None) -> torch.dtype:
    """Half precision is a GPU setting: on a CPU fallback (``device: auto``) it becomes float32;
    asked for explicitly on a CPU it is an error (most CPU kernels lack float16)."""
    dtype = DTYPES[role_spec.dtype]
    if dtype == torch.float16 and device.type == "cpu":
        if role_spec.device != "auto":
            raise SpecError(f"{role}.dtype", "float16 on cpu is not supported by most kernels; use float32 or bfloat16")
        if progress:
            progress(f"{role}: no GPU visible, running in float32 instead of float16")
        return torch.float32
    return dtype
