"""The AdaLN block shared by every configuration: [intra-scale attention] -> [inter-scale mixer] -> FFN.
Either bracketed branch can be absent: no intra branch is VAR; no inter-scale mixer is the Markov assumption over
scales (HMAR, MVAR), where scale k sees earlier scales only through its input, the upsampled f_hat of scales < k.

Shape legend: B batch, L tokens of all scales, l tokens of one scale, C width, D condition width.
Each branch is pre-normed by one non-affine LayerNorm, modulated by (1 + scale) and shift from the class
condition, multiplied by a gate gamma, and added to the residual stream (VAR / M-VAR).
The AdaLN projection emits [gamma_1..n, scale_1..n, shift_1..n] for n branches: VAR's order with n = 2
(gamma1, gamma2, scale1, scale2, shift1, shift2) and M-VAR's with n = 3. It is either the block's own
`ada_lin` = SiLU -> Linear(D, 3nC) of the condition, or, with VAR's shared AdaLN (`shared_aln`, VAR-d36-s), one
`SharedAdaLin` for the whole model whose output every block offsets by its own learned `ada_gss` (1, 1, 3n, C).
"""

from __future__ import annotations

import torch
from torch import nn

from varbench.layout import ScaleLayout
from varbench.mixers.base import State, TokenMixer
from varbench.modules.fused import fused, gated_residual, ln_modulate, residual_modulate, runs_fused
from varbench.utils.precision import active_autocast_dtype


class DropPath(nn.Module):
    """Per-sample stochastic depth with 1/keep rescaling (timm semantics); identity outside training.

    It is applied to a branch's gate (B, 1, C) rather than to the branch output (B, L, C): y * (gamma * mask / keep)
    equals drop_path(y * gamma) and spares two full-size element-wise passes (and their backward) per branch.
    The keep probability is also a tensor (`keep_prob`, not saved): a float would be a constant to torch.compile, one
    graph per block (their rates differ; torch 2.11 specialised it even where 2.14 does not), where a tensor is an
    input of one graph the blocks share.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob, self.drops = drop_prob, drop_prob > 0  # (the forward reads no float)
        self.register_buffer("keep_prob", torch.tensor(1.0 - drop_prob), persistent=False)

    def forward(self, gate_B1C: torch.Tensor) -> torch.Tensor:
        if not (self.drops and self.training):
            return gate_B1C
        mask_B11 = torch.rand(gate_B1C.shape[0], 1, 1, device=gate_B1C.device) < self.keep_prob
        return gate_B1C * (mask_B11 / self.keep_prob)


class FFN(nn.Module):
    """fc1 -> GELU (tanh approximation, as VAR) -> fc2."""

    linear_first = True  # its input goes to a Linear first (`AdaLNBlock.modulate`)

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x_BLC)))


class SharedAdaLin(nn.Sequential):
    """VAR's shared AdaLN projection (`shared_ada_lin`): SiLU -> Linear(D, 3nC), its output viewed (B, 1, 3n, C)
    (n branches per block), computed once per forward and read by every block. Keys `1.weight` / `1.bias` as VAR."""

    def __init__(self, cond_dim: int, dim: int, num_branches: int):
        super().__init__(nn.SiLU(), nn.Linear(cond_dim, 3 * num_branches * dim))
        self.dim, self.num_rows = dim, 3 * num_branches

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, self.num_rows, self.dim)


def linear_dtype(branch: nn.Module | None, x: torch.Tensor) -> torch.dtype | None:
    """The dtype that `branch`'s first Linear casts its input `x` to under the caller's autocast, where the branch
    takes its input to a Linear first (its `linear_first`); None otherwise (the input stays as it is)."""
    return active_autocast_dtype(x.device.type) if getattr(branch, "linear_first", False) else None


def num_branches(mixer: object | None, intra: object | None) -> int:
    """Residual branches of a block: the FFN, plus the intra-scale branch and the inter-scale mixer when present
    (given as modules or as their factories)."""
    return 1 + (intra is not None) + (mixer is not None)


class AdaLNBlock(nn.Module):
    """One backbone block.

    Args:
        dim (int): width C.
        cond_dim (int): width D of the class condition.
        mixer (TokenMixer, Optional): the inter-scale mixer, or None (no inter-scale branch).
        intra (nn.Module, Optional): the intra-scale branch (`forward(x, layout)`, `step(x, layout, k)`), or None.
        mlp_ratio (float, Optional): FFN hidden width over C. Default: 4.0.
        drop_path (float, Optional): stochastic-depth rate of every branch. Default: 0.0.
        norm_eps (float, Optional): LayerNorm epsilon. Default: 1e-6.
        shared_aln (bool, Optional): VAR's shared AdaLN: no `ada_lin`; the block reads the model's `SharedAdaLin`
            output (B, 1, 3n, C) instead of the condition and adds its learned `ada_gss` (1, 1, 3n, C) (initialised
            randn / sqrt(C), as VAR). Default: False.
    """

    def __init__(self, dim: int, cond_dim: int, mixer: TokenMixer | None, intra: nn.Module | None = None,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, norm_eps: float = 1e-6, shared_aln: bool = False):
        super().__init__()
        self.dim = dim
        self.fused_elementwise = False  # fused modulate and residual (ScaleAR.set_fused_elementwise)
        self.intra = intra
        self.mixer = mixer
        self.ffn = FFN(dim, round(dim * mlp_ratio))
        self.num_branches = num_branches(mixer, intra)
        self.shared_aln = shared_aln
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 3 * self.num_branches, dim) / dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 3 * self.num_branches * dim))
        self.drop_path = DropPath(drop_path)

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """The AdaLN rows (B, 3n, 1, C): gamma_1..n, 1 + scale_1..n, shift_1..n, one per branch in the order intra,
        mixer, ffn. `cond` is the class condition (B, D), or with shared_aln the model's shared projection
        (B, 1, 3n, C). They depend on the condition alone: sampling computes them once per generation
        (`ScaleAR.scale_logits`) and passes them to the `step` of every scale."""
        if self.shared_aln:
            if cond.dim() != 4:  # a (B, D) condition would broadcast against ada_gss without an error
                raise ValueError(f"a shared-AdaLN block reads the SharedAdaLin output (B, 1, {3 * self.num_branches}, "
                                 f"{self.dim}), got a tensor of shape {tuple(cond.shape)}")
            ada = self.ada_gss + cond
        else:
            ada = self.ada_lin(cond)
        gamma_Bn1C, scale_Bn1C, shift_Bn1C = ada.view(-1, 3, self.num_branches, 1, self.dim).unbind(1)
        return torch.cat((gamma_Bn1C, scale_Bn1C.add(1), shift_Bn1C), dim=1)

    def rows(self, ada_B3n1C: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], ...]:
        """`modulation`'s rows as gammas, (1 + scale)s, shifts: tuples of n (B, 1, C), one op (no per-branch
        indexing: each index would be one more op at every scale of sampling)."""
        rows, n = ada_B3n1C.unbind(1), self.num_branches
        return rows[:n], rows[n:2 * n], rows[2 * n:]

    def modulate(self, x_BLC: torch.Tensor, scale1p_B1C: torch.Tensor, shift_B1C: torch.Tensor,
                 branch: nn.Module | None = None) -> torch.Tensor:
        """LN(x) * (1 + scale) + shift: the input of a branch (`scale1p_B1C` is 1 + scale, as `modulation` gives it).
        Fused, and where `branch` reads it through a Linear first (its `linear_first`), it comes in that Linear's
        autocast dtype: the values it would cast it to."""
        if not runs_fused(self):
            return ln_modulate(x_BLC, scale1p_B1C, shift_B1C, self.ln_wo_grad.eps)
        return fused(ln_modulate)(x_BLC, scale1p_B1C, shift_B1C, self.ln_wo_grad.eps, linear_dtype(branch, x_BLC))

    def residual(self, x_BLC: torch.Tensor, y_BLC: torch.Tensor, gamma_B1C: torch.Tensor) -> torch.Tensor:
        """x + DropPath(y * gamma): the gated residual update of a branch (DropPath acts on the gate)."""
        if runs_fused(self):
            return fused(gated_residual)(x_BLC, y_BLC, gamma_B1C)
        return gated_residual(x_BLC, y_BLC, self.drop_path(gamma_B1C))

    def residual_modulate(self, x_BLC: torch.Tensor, y_BLC: torch.Tensor, gamma_B1C: torch.Tensor,
                          scale1p_B1C: torch.Tensor, shift_B1C: torch.Tensor,
                          branch: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """`residual`, then `modulate` of the new stream for the next branch `branch`: (new stream, its input);
        fused, one kernel."""
        if not runs_fused(self):
            x_BLC = self.residual(x_BLC, y_BLC, gamma_B1C)
            return x_BLC, self.modulate(x_BLC, scale1p_B1C, shift_B1C)
        return fused(residual_modulate)(x_BLC, y_BLC, gamma_B1C, scale1p_B1C, shift_B1C, self.ln_wo_grad.eps,
                                        linear_dtype(branch, x_BLC))

    def branches(self) -> list[nn.Module]:
        """The block's branches in the order they run: intra-scale, inter-scale mixer, FFN (the present ones)."""
        return [branch for branch in (self.intra, self.mixer, self.ffn) if branch is not None]

    def forward(self, x_BLC: torch.Tensor, cond: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        """The block over the whole sequence; `cond` as in `modulation`."""
        gammas, scales, shifts = self.rows(self.modulation(cond))
        i = 0
        if self.intra is not None:
            x_BLC = self.residual(x_BLC, self.intra(self.modulate(x_BLC, scales[0], shifts[0]), layout),
                                  gammas[0])
            i = 1
        if self.mixer is not None:
            x_BLC = self.residual(x_BLC, self.mixer(self.modulate(x_BLC, scales[i], shifts[i]), layout),
                                  gammas[i])
            i += 1
        return self.residual(x_BLC, self.ffn(self.modulate(x_BLC, scales[i], shifts[i])), gammas[i])

    def step(self, x_BlC: torch.Tensor, state: State, cond: torch.Tensor, layout: ScaleLayout,
             k: int) -> tuple[torch.Tensor, State]:
        """The same block over one whole scale k, carrying the mixer's state. `cond` is this block's AdaLN rows,
        `modulation(condition)`, the same at every scale: the caller computes them once per generation. A branch's
        residual update and the next branch's pre-norm are one step (`residual_modulate`: one kernel, fused)."""
        gammas, scales, shifts = self.rows(cond)
        branches = self.branches()
        h_BlC = self.modulate(x_BlC, scales[0], shifts[0], branches[0])
        for i, branch in enumerate(branches):
            if branch is self.mixer:
                y_BlC, state = branch.step(h_BlC, state, layout, k)
            elif branch is self.intra:
                y_BlC = branch.step(h_BlC, layout, k)
            else:
                y_BlC = branch(h_BlC)
            if i + 1 == len(branches):
                return self.residual(x_BlC, y_BlC, gammas[i]), state
            x_BlC, h_BlC = self.residual_modulate(x_BlC, y_BlC, gammas[i], scales[i + 1], shifts[i + 1],
                                                  branches[i + 1])
