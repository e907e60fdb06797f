"""Kernel dispatch, one convention for every module that has kernels (mixers, intra variants).

A module is built with `backend`: "reference" (plain PyTorch, any device, the oracle), a kernel's name ("flex",
"fla", "mamba_ssm", ...), or "auto". Never a silent fallback:

- a named kernel must be installed (and a GPU present) when the module is built, and every call must give it CUDA
  tensors: a CPU tensor is an error, not a quiet switch to the reference;
- "auto" decides per call from the input's device: the first kernel that can run here when the tensor is on CUDA,
  else the reference (what can run here is checked once, when the module is built: no import machinery inside a
  compiled forward);
- a CPU kernel (a faster plain-PyTorch form of the same math, checked against the reference by its tests) is the
  mirror image: it runs on CPU tensors only, and "auto" takes it off the GPU instead of the reference;
- whichever ran is recorded on the module as `backend_ran` (outside torch.compile tracing), and `backend_on(device)`
  answers the same question without a call, for records of compiled models.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Callable

import torch

REFERENCE = "reference"


def has_module(name: str) -> bool:
    """True when a package can be imported (without importing it). A module already in sys.modules counts as it is
    (find_spec raises on one without a __spec__, e.g. a test's stand-in for a package)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def cuda_and(*modules: str) -> Callable[[], bool]:
    """A kernel's check: CUDA is present and every named package is installed."""
    return lambda: torch.cuda.is_available() and all(has_module(m) for m in modules)


def resolve_backend(requested: str, kernels: dict[str, Callable[[], bool]], owner: str) -> str:
    """Check a requested backend when a module is built; return it unchanged ("auto" stays "auto": it is decided per
    call by `pick_backend`).

    Args:
        requested (str): "auto", "reference" or a name from `kernels`.
        kernels (dict[str, Callable[[], bool]]): kernel name -> check that it can run on this machine, in the order
            "auto" prefers them. The reference is always available and is not listed.
        owner (str): the module's name, for error messages.
    """
    if requested in ("auto", REFERENCE):
        return requested
    if requested not in kernels:
        raise ValueError(f"{owner}: unknown backend {requested!r}; valid: {['auto', REFERENCE, *kernels]}")
    if not kernels[requested]():
        raise ValueError(f"{owner}: backend {requested!r} is not available on this machine (missing package or no "
                         f"GPU); use backend=auto or backend={REFERENCE}")
    return requested


def pick_backend(requested: str, available: tuple[str, ...], device: torch.device, owner: str,
                 cpu_kernels: tuple[str, ...] = ()) -> str:
    """The backend that runs on tensors of `device`: the named one (a CUDA kernel only on CUDA, a CPU kernel, one of
    `cpu_kernels`, only on the CPU, else a ValueError), or for "auto" the first of the `available` kernels (those that
    can run on this machine, preferred first) that runs on this device, else the reference."""
    if requested == REFERENCE:
        return REFERENCE
    if requested != "auto":
        where = "cpu" if requested in cpu_kernels else "cuda"
        if device.type != where:
            raise ValueError(f"{owner}: backend {requested!r} runs on {where.upper()} tensors, got tensors on "
                             f"{device}; use backend=auto (the device's kernel, else the reference) or "
                             f"backend={REFERENCE}")
        return requested
    runs_here = [name for name in available if device.type == ("cpu" if name in cpu_kernels else "cuda")]
    return runs_here[0] if runs_here else REFERENCE


class KernelChoice:
    """Mixin of a module with kernels: `choose_backend(...)` in `__init__`, `run_backend(x)` at the top of each call.

    Attributes:
        backend (str): what was asked ("auto", "reference" or a kernel name).
        backend_ran (str | None): the backend of the latest call (None before the first).
    """

    backend: str = REFERENCE
    backend_ran: str | None = None
    kernels_here: tuple[str, ...] = ()
    cpu_kernels: tuple[str, ...] = ()

    def choose_backend(self, requested: str, kernels: dict[str, Callable[[], bool]], owner: str,
                       cpu_kernels: tuple[str, ...] = ()) -> None:
        """Check `requested` (see `resolve_backend`); keep what a call needs to pick: the kernels that can run here
        and which of them run on CPU tensors (`cpu_kernels`, names in `kernels`; the others run on CUDA ones)."""
        self.backend, self._backend_owner = resolve_backend(requested, kernels, owner), owner
        self.kernels_here = tuple(name for name, can_run in kernels.items() if can_run())
        self.cpu_kernels = cpu_kernels

    def backend_on(self, device) -> str:
        """The backend a call on tensors of `device` runs."""
        return pick_backend(self.backend, self.kernels_here, torch.device(device), self._backend_owner,
                            self.cpu_kernels)

    def run_backend(self, x: torch.Tensor) -> str:
        """The backend this call runs on `x`, recorded as `backend_ran`."""
        name = self.backend_on(x.device)
        if not torch.compiler.is_compiling():  # a traced attribute write would be a side effect of the graph
            self.backend_ran = name
        return name


def backend_of(module, device) -> str:
    """The kernel a module with kernels runs: the one its latest call ran, else the one a call on `device` would run
    (never "auto"); "none" for an absent branch (None), "reference" for a module without kernels."""
    if module is None:
        return "none"
    if not isinstance(module, KernelChoice):
        return REFERENCE
    return module.backend_ran or module.backend_on(device)
