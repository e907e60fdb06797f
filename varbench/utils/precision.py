"""Precision words in one place: the compute dtype "fp32 at least", the autocast-off decorator of the oracles, and the
autocast context of a run's `precision` setting (fp32 | bf16 | fp16).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

# fp8 (training only): bf16 autocast around the blocks' FP8 matmuls (varbench/training/fp8.py); bf16 elsewhere
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half, bf16, fp32 (and integers); fp64 stays fp64, so the oracles can be checked to ~1e-14."""
    return torch.promote_types(dtype, torch.float32)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """`t` in `at_least_fp32(t.dtype)` (a no-op when it already is)."""
    return t.to(at_least_fp32(t.dtype))


def no_autocast(fn):
    """Run `fn` in the precision it states even inside an autocast region: autocast would silently turn the matmuls,
    einsums and convolutions of an oracle into bf16 ones. The first tensor argument names the device."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next(a for a in (*args, *kwargs.values()) if torch.is_tensor(a))
        with torch.autocast(first.device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a `precision` setting (None for fp32)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {list(AUTOCAST_DTYPES)}, got {precision!r}")
    return AUTOCAST_DTYPES[precision]


def active_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype the caller's autocast casts matmul inputs to on `device_type` ("cuda", "cpu"), or None outside
    autocast."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` (fp32: a disabled one) on `device`."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def set_tf32(enabled: bool) -> None:
    """CUDA's fp32 matmuls in TF32 (`enabled`: VAR's `--tf32`) or in full fp32 (PyTorch's default), cuDNN's
    convolutions allowed TF32 either way (PyTorch's default, and VAR's with `--tf32`). CUDA's flags only: the CPU's
    fp32 matmuls stay fp32. Under autocast it touches only what runs in fp32 outside autocast's casts."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = True


def set_deterministic(enabled: bool) -> None:
    """Only deterministic algorithms (`enabled`: `train.deterministic`), or PyTorch's default (the fastest, some
    summing in an order that changes from run to run: atomic adds). Under torch.compile Inductor follows the flag too
    (index_put with accumulation falls back to aten's sorted one; no reduction config is picked by timing it), so a
    GPU run resumes to bitwise-equal weights only with it. cuBLAS needs a fixed workspace for that: set here unless
    the environment already chose one."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


def caller_autocast() -> contextlib.AbstractContextManager:
    """The caller's CUDA autocast, re-entered with its weight-cast cache off (nothing when autocast is off), for CUDA
    graph captures: a cast cached during one capture would be memory of that graph, read by later graphs and freed
    at the caller's exit."""
    dtype = active_autocast_dtype("cuda")
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype, cache_enabled=False)


def drop_cached_weight_casts() -> None:
    """Free the weight casts that autocast has cached in the caller's region: a low-precision copy of every fp32
    weight a matmul has read there (0.57 GiB for VAR-d16), kept until the outermost region exits. A sampler calls
    it between the scales and the tokenizer decode, which reads none of those weights: otherwise the copies sit
    beside the decoder's activations, at the sampling peak. (The official sampler runs under inference_mode, where
    autocast caches nothing.) Only copies go: a later matmul casts its weight again. The CUDA graphs capture with
    the cache off (`caller_autocast`), so none of them reads a dropped copy."""
    torch.clear_autocast_cache()


def hold_linear_weights_in(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the weight of every `nn.Linear` inside `module` in `dtype` (in place); returns how many it changed.

    For a process that only samples under autocast to `dtype`: autocast casts each of these weights to `dtype` at
    its matmul anyway, and caches the copy, so both the fp32 weight and its copy stay alive through the scale loop
    (VAR-d16's blocks: 1.1 GiB and 0.56 GiB; the batch-1 sampling peak, session 25). Held in `dtype`, the matmul reads
    the same values and the fp32 copy is gone. Give it the modules that run under autocast only (a ScaleAR's
    `blocks`, not its fp32 `word_embed`). Biases stay fp32: Mamba-1 hands `dt_proj.bias` to its scan in fp32."""
    changed = 0
    for linear in module.modules():
        if isinstance(linear, torch.nn.Linear) and linear.weight.dtype != dtype:
            linear.weight.data = linear.weight.data.to(dtype)
            changed += 1
    return changed
