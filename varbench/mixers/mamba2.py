"""Mamba-2 (SSD) as M-VAR's inter-scale mixer: a token-causal scan over every scale, state carried across scales.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C model width, E = expand * C inner
width, H = E / P heads, P head dim, G groups, N state dim, W conv width, F = E + 2GN conv channels.

Parameter names, shapes and initialisation are those of `mamba_ssm.Mamba2(d_model=C, d_state=64, d_conv=4, expand=2)`
as M-VAR builds it (var_mvar_facts.md 4.4), so `mamba.*` checkpoint keys load as they are. Layer per token:
in_proj -> [z, xBC, dt]; xBC -> depthwise causal conv + SiLU -> [x, B, C]; SSD scan with dt = softplus(dt + dt_bias),
A = -exp(A_log), skip D; gated RMSNorm(y * SiLU(z)); out_proj.
Unlike `mamba_ssm.Mamba2.step` (one token at a time), `step` appends a whole scale: the SSD scan starts from the
carried state and the conv from the carried tail of the last W - 1 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from varbench.layout import ScaleLayout
from varbench.mixers.base import NO_WEIGHT_DECAY, State, TokenMixer
from varbench.mixers.ssm import CarriedScan, inverse_softplus_dt
from varbench.modules import GatedRMSNorm
from varbench.ops.backend import cuda_and
from varbench.ops.causal_conv import kernel as conv_kernel
from varbench.ops.causal_conv.reference import causal_conv1d_ref
from varbench.ops.ssd import fused_op
from varbench.ops.ssd import kernel as ssd_kernel
from varbench.ops.ssd.reference import ssd_scan_ref
from varbench.utils.precision import at_least_fp32

KERNELS = {"mamba_ssm": cuda_and("mamba_ssm", "causal_conv1d")}


def fitted_chunk(tokens: int, chunk: int) -> int:
    """The chunk fitted to a scan of `tokens`: the next power of two >= tokens, at least 16 (the kernels' smallest
    tile), at most `chunk`."""
    return min(chunk, max(16, 1 << (tokens - 1).bit_length()))


class Mamba2Mixer(CarriedScan, TokenMixer):
    """M-VAR's Mamba2 branch with an explicit, carried state.

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention heads (unused: SSD heads are E / headdim). Default: None.
        layer_idx (int, Optional): block index (unused). Default: 0.
        backend (str, Optional): "mamba_ssm" (causal_conv1d + Triton SSD + Triton gated RMSNorm), "reference"
            (pure torch) or "auto" (mamba_ssm on CUDA when installed). Default: "auto".
        d_state (int, Optional): N. Default: 64 (M-VAR).
        d_conv (int, Optional): W. Default: 4.
        expand (int, Optional): E / C. Default: 2.
        headdim (int, Optional): P. Default: 64.
        ngroups (int, Optional): G, heads sharing one B and C. Default: 1.
        chunk_size (int, Optional): SSD chunk length (both backends). Default: 256.
        fused (bool, Optional): `forward` through mamba_ssm's fused `mamba_split_conv1d_scan_combined` (Mamba2's
            `use_mem_eff_path`, what M-VAR ran); `step` is always unfused. Needs backend "mamba_ssm". Default: False.
        fit_chunk (bool, Optional): a scan over at most `chunk_size` tokens (every scale's step; a short sequence)
            runs in a chunk fitted to it (`fitted_chunk`): the same one-chunk scan over fewer padded rows, for
            mamba_ssm sizes its kernels' grids by the chunk, not by the tokens. Default: True, as
            configs/mixer/mamba2.yaml (so a run saved before the key existed samples in it too); False is
            mamba_ssm's tiling.
    """

    within_scale = "causal"
    rescale_out_proj = False  # M-VAR leaves Mamba2's out_proj alone
    # as mamba_ssm.Mamba2 marks them; it marks nothing `_no_reinit` (dt_bias, A_log, D belong to no Linear/Conv, so
    # the backbone's init never touches them)
    library_markers = {NO_WEIGHT_DECAY: ("dt_bias", "A_log", "D")}

    def __init__(self, dim: int, num_heads: int | None = None, layer_idx: int = 0, backend: str = "auto",
                 d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64, ngroups: int = 1,
                 chunk_size: int = 256, fused: bool = False, fit_chunk: bool = True):
        super().__init__()
        self.choose_backend(backend, KERNELS, "mamba2")
        if fused and (self.backend == "reference" or not KERNELS["mamba_ssm"]()):
            raise ValueError(f"mamba2: fused=True needs backend 'mamba_ssm' (or auto, with it installed and a GPU), "
                             f"got {self.backend!r}")
        self.d_inner = expand * dim
        if self.d_inner % headdim or (self.d_inner // headdim) % ngroups:
            raise ValueError(f"mamba2: expand*dim={self.d_inner} must split into heads of {headdim}, "
                             f"their number divisible by ngroups={ngroups}")
        self.d_state, self.d_conv, self.headdim, self.ngroups = d_state, d_conv, headdim, ngroups
        self.nheads, self.chunk_size, self.fused = self.d_inner // headdim, chunk_size, fused
        self.fit_chunk = fit_chunk
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        # created in mamba_ssm.Mamba2's order, so a seed gives the same initial values as the library
        # in_proj output order [z, x, B, C, dt]
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads, dtype=torch.float32).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        if self.fused:
            if self.run_backend(x_BLC) != "mamba_ssm":  # auto on CPU tensors: the fused kernel cannot run, say so
                raise ValueError(f"mamba2: fused=True runs mamba_ssm's fused kernel, on CUDA only; got {x_BLC.device}")
            return self._fused_forward(x_BLC)
        return self._mix(x_BLC, None, None, self.weight_terms()["A"])[0]

    def init_state(self, batch: int, layout: ScaleLayout, device=None, dtype=torch.float32) -> State:
        return {
            "ssm": torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device,
                               dtype=at_least_fp32(dtype)),
            "conv": torch.zeros(batch, self.d_conv - 1, self.conv_dim, device=device, dtype=dtype),
        }

    def _mix(self, x_BLC, conv_tail, ssm_state, A_H):
        """in_proj, conv, SSD scan, gated norm, out_proj from the given states (None: sequence start); `A_H` is
        `weight_terms()`'s A."""
        kernel = self.run_backend(x_BLC) == "mamba_ssm"
        Bsz, L, _ = x_BLC.shape
        z_BLE, xBC_BLF, dt_BLH = self.in_proj(x_BLC).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv = conv_kernel.causal_conv1d if kernel else causal_conv1d_ref
        xBC_BLF, tail = conv(xBC_BLF, self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_tail, activation="silu")
        GN = self.ngroups * self.d_state
        x_BLE, B_BLGN, C_BLGN = xBC_BLF.split([self.d_inner, GN, GN], dim=-1)
        scan = ssd_kernel.ssd_scan if kernel else ssd_scan_ref
        y_BLHP, ssm = scan(
            x_BLE.reshape(Bsz, L, self.nheads, self.headdim), dt_BLH, A_H,
            B_BLGN.reshape(Bsz, L, self.ngroups, self.d_state), C_BLGN.reshape(Bsz, L, self.ngroups, self.d_state),
            D=self.D, initial_state=ssm_state, chunk_size=self.scan_chunk(L), dt_bias=self.dt_bias, dt_softplus=True,
        )
        y_BLE = self.norm(y_BLHP.reshape(Bsz, L, self.d_inner), z_BLE, kernel=kernel)
        return self.out_proj(y_BLE), tail, ssm

    def scan_chunk(self, tokens: int) -> int:
        """The SSD chunk of a scan over `tokens`: `chunk_size`, or with `fit_chunk` the chunk fitted to them (which
        is `chunk_size` for more tokens than one chunk holds)."""
        return fitted_chunk(tokens, self.chunk_size) if self.fit_chunk else self.chunk_size

    def _fused_forward(self, x_BLC):
        return fused_op.mamba2_fused_forward(
            self.in_proj(x_BLC), self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias,
            self.weight_terms()["A"], self.D, self.chunk_size, self.norm.weight, self.norm.eps,
            self.out_proj.weight, self.headdim, self.ngroups,
        )

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        """Forward FLOPs (multiply-add = 2). Counted: in_proj and out_proj; the depthwise conv (2W per channel) and
        SiLU (4); dt softplus (4 per head); the chunked SSD form the kernel runs, per chunk of t tokens: C.B^T
        (2 t^2 N per group), its masked product with dt*x (2 t^2 P per head, the full square although the Triton
        kernel skips some upper-triangle tiles), chunk states and their read-out (2 t P N each per head), state
        passing (2 P N per head) and the D skip (2 per channel); gated RMSNorm (SiLU 4, gate 1, square-sum 2,
        scale 2 per channel). Element-wise exp/softplus/SiLU count 1 per op inside them."""
        L, C, E, H = layout.L, self.in_proj.in_features, self.d_inner, self.nheads
        P, N, G = self.headdim, self.d_state, self.ngroups
        dense = 2 * L * C * self.in_proj.out_features + 2 * L * E * C
        conv = L * self.conv_dim * (2 * self.d_conv + 4) + 4 * L * H
        chunks = [min(self.chunk_size, L - s) for s in range(0, L, self.chunk_size)]
        ssd = sum(2 * t * t * N * G + H * (2 * t * t * P + 4 * t * P * N + 2 * P * N) for t in chunks) + 2 * L * E
        norm = 9 * L * E
        return batch * (dense + conv + ssd + norm)

    def state_bytes(self, layout: ScaleLayout, batch: int = 1, dtype=torch.bfloat16) -> int:
        """SSM state (B, H, P, N) in fp32 plus the conv tail (B, W - 1, F) in `dtype`; constant over scales."""
        ssm = self.nheads * self.headdim * self.d_state * at_least_fp32(dtype).itemsize
        return batch * (ssm + (self.d_conv - 1) * self.conv_dim * dtype.itemsize)
