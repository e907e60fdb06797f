"""AiM's block and head pieces for the raster-order backbone (hp-l33/AiM `models/stage2/block.py`,
`mixer_seq_simple.py`): RMSNorm, the "add -> norm -> modulate -> mixer" block with adaLN or adaLN-group, the gated
MLP and the final adaLN layer.

Shape legend: B batch, L tokens, l tokens of one step, C width, G adaLN groups, F modulation rows (3 per branch).

Unlike VAR's pre-norm block (x + gate * branch(LN(x))), the block takes the previous block's branch output and the
residual stream separately and adds them first (mamba_ssm's fused add+norm order), keeping the residual in fp32:
    residual = hidden + residual;  hidden = gate * mixer(RMSNorm(residual) * (1 + scale) + shift)
With an MLP the same is repeated with a second RMSNorm. The modulation rows come either from the block's own
SiLU -> Linear(C, F*C) of the class embedding (adaLN), or from a model-level table shared by every G-th block plus
the block's learned `scale_shift_table` (adaLN-group). Row order: shift, scale, gate without an MLP;
shift_mixer, shift_mlp, scale_mixer, scale_mlp, gate_mixer, gate_mlp with one (the official chunk order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from varbench.mixers.base import State, TokenMixer
from varbench.modules import RMSNorm
from varbench.utils.precision import upcast


def modulate(x_BLC: torch.Tensor, shift_BC: torch.Tensor, scale_BC: torch.Tensor) -> torch.Tensor:
    return x_BLC * (1 + scale_BC.unsqueeze(1)) + shift_BC.unsqueeze(1)


class GatedMLP(nn.Module):
    """mamba_ssm's GatedMLP: fc1 (C -> 2H, no bias) split into value and gate, value * SiLU(gate), fc2 (H -> C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x_BLC).chunk(2, dim=-1)
        return self.fc2(value * F.silu(gate))


class AiMBlock(nn.Module):
    """One raster block: add -> RMSNorm -> adaLN -> mixer [-> add -> RMSNorm -> adaLN -> gated MLP].

    Args:
        dim (int): width C.
        mixer (TokenMixer): the token mixer (any registry mixer; in raster order a "scale" is one token).
        mlp_hidden (int, Optional): hidden width of the gated MLP; 0: no MLP (AiM). Default: 0.
        adaln_group (bool, Optional): take the modulation from the model-level group table plus this block's
            `scale_shift_table` instead of the block's own `ada_lin`. Default: False.
        norm_eps (float, Optional): RMSNorm epsilon. Default: 1e-5.
    """

    def __init__(self, dim: int, mixer: TokenMixer, mlp_hidden: int = 0, adaln_group: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.dim, self.adaln_group = dim, adaln_group
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.mixer = mixer
        self.rows = 3 if mlp_hidden == 0 else 6
        if mlp_hidden:
            self.norm2 = RMSNorm(dim, eps=norm_eps)
            self.mlp = GatedMLP(dim, mlp_hidden)
        if adaln_group:
            self.scale_shift_table = nn.Parameter(torch.randn(1, self.rows, dim) / dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.rows * dim))

    def modulation(self, ada_BD: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The F rows (each (B, C)) from the class embedding (adaLN) or this block's group chunk (B, F, C)."""
        if self.adaln_group:
            return (self.scale_shift_table + ada_BD).unbind(1)
        return self.ada_lin(ada_BD).chunk(self.rows, dim=1)

    def forward(self, hidden_BLC, residual_BLC, ada, layout) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, residual) of the whole sequence; residual None before the first block."""
        return self._run(hidden_BLC, residual_BLC, ada, lambda x: (self.mixer(x, layout), None))[:2]

    def step(self, hidden_BlC, residual_BlC, ada, state: State, layout, k: int):
        """The same over token k, carrying the mixer's state: returns (hidden, residual, new state)."""
        return self._run(hidden_BlC, residual_BlC, ada, lambda x: self.mixer.step(x, state, layout, k))

    def _run(self, hidden, residual, ada, mix):
        residual = hidden if residual is None else hidden + residual
        residual = upcast(residual)  # fp32 residual
        rows = self.modulation(ada)
        shift, scale, gate = rows if self.rows == 3 else rows[0::2]
        y, state = mix(modulate(self.norm(residual, hidden.dtype), shift, scale))
        hidden = gate.unsqueeze(1) * y
        if self.rows == 6:
            shift2, scale2, gate2 = rows[1::2]
            residual = hidden + residual
            hidden = gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(residual, y.dtype), shift2, scale2))
        return hidden, residual, state


class FinalLayer(nn.Module):
    """AiM's head norm: RMSNorm `norm` (with weight) modulated by (shift, scale) = SiLU -> Linear(C, 2C) of the
    class embedding (zero-initialised)."""

    def __init__(self, dim: int, norm_eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        shift_BC, scale_BC = self.ada_lin(cond_BD).chunk(2, dim=1)
        return modulate(self.norm(x_BLC), shift_BC, scale_BC)
