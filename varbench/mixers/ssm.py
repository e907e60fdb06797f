"""What the two Mamba mixers share (mamba.py: Mamba-1's selective scan; mamba2.py: Mamba-2's SSD): the scale step
over a carried state and mamba_ssm's dt-bias initialisation. Not a mixer itself (no YAML registers it).

Shape legend: B batch, l tokens of the current scale, C model width.
"""

from __future__ import annotations

import math

import torch

from varbench.layout import ScaleLayout
from varbench.mixers.base import State, carry_terms
from varbench.utils.precision import upcast


class CarriedScan:
    """The scale step both Mamba mixers share: A = -exp(A_log) derived once per generation (their weight term,
    mixers/base.py: two kernels fewer per later scale), then the subclass's `_mix(x, conv_tail, ssm_state, A)`."""

    def weight_terms(self) -> State:
        """A = -exp(A_log) ((H,) for Mamba2, (E, N) for Mamba), at least fp32."""
        return {"A": -torch.exp(upcast(self.A_log))}

    def step(self, x_BlC: torch.Tensor, state: State, layout: ScaleLayout, k: int) -> tuple[torch.Tensor, State]:
        terms = self.step_terms(state, k)
        y_BlC, tail, ssm = self._mix(x_BlC, state["conv"], state["ssm"], terms["A"])
        # the SSM state keeps init_state's dtype (at least fp32); the conv tail keeps its inputs' (in_proj's output:
        # under autocast bf16, which a cast to init_state's dtype would only undo at the next scale), as the fla
        # mixers' short-conv tails do
        return y_BlC, carry_terms({"ssm": ssm.to(state["ssm"].dtype), "conv": tail}, terms)


def inverse_softplus_dt(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> torch.Tensor:
    """mamba_ssm's dt bias init: dt ~ exp(U[ln dt_min, ln dt_max]) floored, then inverse softplus (so that
    softplus(dt_bias) = dt)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
