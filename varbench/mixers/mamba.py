"""Mamba-1 (S6 selective scan) as an inter-scale mixer: a token-causal scan over every scale, state carried.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C model width, E = expand * C inner
width, R dt rank, N state dim, W conv width.

Parameter names, shapes and initialisation are those of `mamba_ssm.Mamba(d_model=C)` (d_state 16, d_conv 4, expand 2,
dt_rank ceil(C / 16)): in_proj -> [x, z]; x -> depthwise causal conv + SiLU; x_proj -> [dt (R), B (N), C (N)];
dt_proj (with the dt bias); scan with A = -exp(A_log) (E, N), skip D, gate SiLU(z); out_proj.
The kernel path runs mamba_ssm's selective-scan kernel from a zero state (a custom op, so torch.compile keeps one graph)
and adds the carried state's contribution in closed form (`varbench.ops.selective_scan.kernel`; one Triton kernel when
sampling), because the kernel takes no initial state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from varbench.layout import ScaleLayout
from varbench.mixers.base import NO_REINIT, NO_WEIGHT_DECAY, State, TokenMixer
from varbench.mixers.ssm import CarriedScan, inverse_softplus_dt
from varbench.ops.backend import cuda_and
from varbench.ops.causal_conv import kernel as conv_kernel
from varbench.ops.causal_conv.reference import causal_conv1d_ref
from varbench.ops.selective_scan import kernel as scan_kernel
from varbench.ops.selective_scan.cpu import selective_scan_cpu
from varbench.ops.selective_scan.reference import selective_scan_ref
from varbench.utils.precision import at_least_fp32, upcast

# cpu_scan: the same scan in plain PyTorch with a hand-written backward (varbench/ops/selective_scan/cpu.py), ~2-3x
# the reference's speed on a CPU; "auto" runs it on CPU tensors, mamba_ssm on CUDA ones
KERNELS = {"mamba_ssm": cuda_and("mamba_ssm", "causal_conv1d"), "cpu_scan": lambda: True}
CPU_KERNELS = ("cpu_scan",)


class MambaMixer(CarriedScan, TokenMixer):
    """Mamba-1 with an explicit, carried state (SSM state and conv tail).

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention heads (unused). Default: None.
        layer_idx (int, Optional): block index (unused). Default: 0.
        backend (str, Optional): "mamba_ssm" (causal_conv1d + mamba_ssm's selective scan, with the carried-state
            correction fused in Triton where no gradient is needed),
            "cpu_scan" (pure torch, CPU tensors: the reference's scan with a hand-written backward, faster),
            "reference" (pure torch, the oracle) or "auto" (mamba_ssm on CUDA when installed, cpu_scan on the CPU).
            Default: "auto".
        d_state (int, Optional): N. Default: 16.
        d_conv (int, Optional): W. Default: 4.
        expand (int, Optional): E / C. Default: 2.
        dt_rank (int | str, Optional): R, or "auto" for ceil(C / 16). Default: "auto".
        dt_min (float, Optional): smallest initial dt. Default: 1e-3.
        dt_max (float, Optional): largest initial dt. Default: 0.1.
    """

    within_scale = "causal"
    rescale_out_proj = False
    # mamba_ssm marks dt_proj.bias `_no_reinit` and A_log, D `_no_weight_decay`. Its model init never touches a
    # Linear weight, so dt_proj.weight's variance-preserving draw survives there too: the backbone keeps both.
    library_markers = {NO_REINIT: ("dt_proj.weight", "dt_proj.bias"), NO_WEIGHT_DECAY: ("A_log", "D")}

    def __init__(self, dim: int, num_heads: int | None = None, layer_idx: int = 0, backend: str = "auto",
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        self.choose_backend(backend, KERNELS, "mamba", CPU_KERNELS)
        self.d_inner, self.d_state, self.d_conv = expand * dim, d_state, d_conv
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        E = self.d_inner
        # created in mamba_ssm.Mamba's order, so a seed gives the same initial values as the library
        self.in_proj = nn.Linear(dim, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        # dt_proj keeps the variance of dt at init; its bias puts softplus(bias) in [dt_min, dt_max]
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_dt(E, dt_min, dt_max))
        # S4D-real init: A[e, n] = -(n + 1)
        self.A_log = nn.Parameter(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(E, 1).log())
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, dim, bias=False)

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        return self._mix(x_BLC, None, None, self.weight_terms()["A"])[0]

    def init_state(self, batch: int, layout: ScaleLayout, device=None, dtype=torch.float32) -> State:
        return {
            "ssm": torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=at_least_fp32(dtype)),
            "conv": torch.zeros(batch, self.d_conv - 1, self.d_inner, device=device, dtype=dtype),
        }

    def _mix(self, x_BLC, conv_tail, ssm_state, A_EN):
        """in_proj, conv, x_proj/dt_proj, selective scan, out_proj from the given states (None: sequence start);
        `A_EN` is `weight_terms()`'s A."""
        backend = self.run_backend(x_BLC)
        kernel = backend == "mamba_ssm"
        x_BLE, z_BLE = self.in_proj(x_BLC).chunk(2, dim=-1)
        conv = conv_kernel.causal_conv1d if kernel else causal_conv1d_ref
        x_BLE, tail = conv(x_BLE, self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_tail, activation="silu")
        dt_BLR, B_BLN, C_BLN = self.x_proj(x_BLE).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta_BLE = nn.functional.linear(dt_BLR, self.dt_proj.weight)  # the bias is added inside the scan, in fp32
        scan = scan_kernel.selective_scan if kernel else selective_scan_ref
        scan = selective_scan_cpu if backend == "cpu_scan" else scan
        # the scan takes channels before tokens (mamba_ssm's layout)
        y_BEL, ssm = scan(
            x_BLE.transpose(1, 2), delta_BLE.transpose(1, 2), A_EN,
            B_BLN.transpose(1, 2), C_BLN.transpose(1, 2), upcast(self.D), z=z_BLE.transpose(1, 2),
            delta_bias=upcast(self.dt_proj.bias), delta_softplus=True, initial_state=ssm_state,
        )
        return self.out_proj(y_BEL.transpose(1, 2)), tail, ssm

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        """Forward FLOPs (multiply-add = 2). Counted: in_proj, x_proj, dt_proj, out_proj; the depthwise conv
        (2W per channel) and SiLU (4); softplus of dt (4 per channel); the scan per channel and state entry: exp(dt A)
        (2), dt B u (2), the state update (2) and the read-out by C (2); the D skip (2) and the SiLU(z) gate (5) per
        channel. The scan is counted as the sequential recurrence (the CUDA kernel's work is of the same order)."""
        L, C, E, R, N = layout.L, self.in_proj.in_features, self.d_inner, self.dt_rank, self.d_state
        dense = 2 * L * (C * 2 * E + E * (R + 2 * N) + R * E + E * C)
        conv = L * E * (2 * self.d_conv + 4)
        scan = L * E * (8 * N + 4 + 2 + 5)
        return batch * (dense + conv + scan)

    def state_bytes(self, layout: ScaleLayout, batch: int = 1, dtype=torch.bfloat16) -> int:
        """SSM state (B, E, N) in fp32 plus the conv tail (B, W - 1, E) in `dtype`; constant over scales."""
        E = self.d_inner
        return batch * (E * self.d_state * at_least_fp32(dtype).itemsize + (self.d_conv - 1) * E * dtype.itemsize)
