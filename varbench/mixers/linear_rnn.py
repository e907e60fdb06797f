"""Shared machinery of the linear-recurrent mixers whose kernels come from fla (GLA, RetNet, linear attention,
DeltaNet, Gated DeltaNet, HGRN2): projections -> [short causal conv] -> recurrence -> [norm / output gate] -> o_proj.

Every such mixer is a token-causal scan over the flattened sequence of all scales, coarse to fine. `forward` runs the
scan over all L tokens from a zero state; `step` runs it over the l tokens of one scale from the carried state
(fp32 recurrent state, plus the last W - 1 inputs of each short convolution) and returns the new state. The building
blocks below are pure PyTorch and keep fla's parameter names and shapes (`q_conv1d.weight` [D, 1, W],
`g_norm_swish_gate.weight` [V], ...), so an fla layer's state dict loads into the matching mixer.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale (L in `forward`), C width,
H heads, K key dim per head, V value dim per head, D channels of one projection, W short-conv width.
"""

from __future__ import annotations

import torch
from torch import nn

from varbench.layout import ScaleLayout
from varbench.mixers.base import State, TokenMixer, carry_terms
from varbench.modules import ShortConvolution
from varbench.ops.backend import cuda_and
from varbench.utils.precision import at_least_fp32


def divide(total: int, parts: int, what: str) -> int:
    """total / parts, or a ValueError that names the hyper-parameter to change."""
    if parts < 1 or total % parts:
        raise ValueError(f"{what}: {total} is not divisible by {parts} heads; change the head count or the expansion")
    return total // parts


def pick_heads(heads: int | None, num_heads: int | None, owner: str) -> int:
    """The mixer's own head count, or the backbone's when `heads` is None."""
    picked = num_heads if heads is None else heads
    if picked is None or picked < 1:
        raise ValueError(f"{owner}: set `heads` (or pass the backbone's num_heads); got heads={heads}, "
                         f"num_heads={num_heads}")
    return picked


def expand(dim: int, ratio: float, what: str) -> int:
    """round(dim * ratio), or a ValueError when that is not an integer (fla asserts the same)."""
    size = round(dim * ratio)
    if abs(size - dim * ratio) > 1e-6 or size < 1:
        raise ValueError(f"{what}: dim * ratio = {dim} * {ratio} is not a positive integer")
    return size


class LinearRNNMixer(TokenMixer):
    """Base of the fla-family mixers. A subclass builds its layers, calls `_setup`, and implements `_recurrence`
    (gates and op call) and `_readout` (norm, output gate, o_proj); forward/step/state/FLOPs live here.

    Class attributes:
        proj_names (tuple[str, ...]): projections `<name>_proj` run on x before the recurrence, each followed by
            `<name>_conv1d` when short convolutions are on.
        kv_flops (int): FLOPs per token, head, key dim and value dim of the recurrence in its token-by-token form
            (decay of the state 1, outer-product update 2, read-out 2, delta-rule retrieval 2).
        v_flops (int): FLOPs per token, head and value dim on top (the delta rule's v - S^T k and beta scaling).

    Init and weight decay: fla (0.6) marks no parameter of its GLA, RetNet, HGRN2, DeltaNet or linear-attention
    layers and initialises them by its model-wide rule (Linear/Conv normal, biases 0), which the backbone's rule
    replaces; only Gated DeltaNet has library markers (`library_markers` there).
    """

    within_scale = "causal"
    proj_names = ("q", "k", "v")
    kv_flops = 5
    v_flops = 0

    def _setup(self, dim: int, heads: int, head_k_dim: int, head_v_dim: int, backend: str, layer_idx: int) -> None:
        self.dim, self.heads, self.layer_idx = dim, heads, layer_idx
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.use_short_conv, self.conv_size = False, 0
        # fla's Triton kernels need a GPU; the reference runs anywhere
        self.choose_backend(backend, {"fla": cuda_and("fla")}, type(self).__name__)

    def _add_short_convs(self, use_short_conv: bool, conv_size: int, conv_bias: bool, channels: dict,
                         activations: dict) -> None:
        """`<name>_conv1d` for each projection named in `channels` (name -> D), as fla's layers build them."""
        self.use_short_conv, self.conv_size = use_short_conv, conv_size
        if use_short_conv:
            for name, size in channels.items():
                setattr(self, f"{name}_conv1d", ShortConvolution(size, conv_size, conv_bias, activations[name]))

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        y_BLC, _ = self._mix(x_BLC, None, offset=0, output_final_state=False, terms=self.weight_terms())
        return y_BLC

    def step(self, x_BlC: torch.Tensor, state: State, layout: ScaleLayout, k: int) -> tuple[torch.Tensor, State]:
        terms = self.step_terms(state, k)
        y_BlC, state = self._mix(x_BlC, state, offset=layout.offsets[k], output_final_state=True, terms=terms)
        return y_BlC, carry_terms(state, terms)

    def _mix(self, x_BlC, state: State | None, offset: int, output_final_state: bool, terms: State):
        h, conv_state = self._project(x_BlC, state)
        S0 = None if state is None else state["recurrent"]
        o_BlHV, S = self._recurrence(x_BlC, h, S0, offset, output_final_state, terms)
        y_BlC = self._readout(o_BlHV, x_BlC)
        return y_BlC, ({"recurrent": S, **conv_state} if output_final_state else None)

    def _project(self, x_BlC: torch.Tensor, state: State | None) -> tuple[dict, State]:
        h, conv_state = {}, {}
        for name in self.proj_names:
            h[name] = getattr(self, f"{name}_proj")(x_BlC)
            if self.use_short_conv:
                tail = None if state is None else state[f"conv_{name}"]
                h[name], conv_state[f"conv_{name}"] = getattr(self, f"{name}_conv1d")(h[name], tail)
        return h, conv_state

    def _recurrence(self, x_BlC, h: dict, S0, offset: int, output_final_state: bool, terms: State):
        """Gates and the op call (`terms`: `weight_terms()`); returns o `[B, l, H, V]` and the final state
        `[B, H, K, V]` (or `None`)."""
        raise NotImplementedError

    def _readout(self, o_BlHV: torch.Tensor, x_BlC: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _conv_channels(self) -> dict[str, int]:
        if not self.use_short_conv:
            return {}
        return {name: getattr(self, f"{name}_conv1d").in_channels for name in self.proj_names}

    def init_state(self, batch: int, layout: ScaleLayout, device=None, dtype=torch.float32) -> State:
        """Zero recurrent state `[B, H, K, V]` (fp32) and, with short convs, zero tails `[B, W - 1, D]` in `dtype`."""
        state = {"recurrent": torch.zeros(batch, self.heads, self.head_k_dim, self.head_v_dim,
                                          device=device, dtype=at_least_fp32(dtype))}
        for name, size in self._conv_channels().items():
            state[f"conv_{name}"] = torch.zeros(batch, self.conv_size - 1, size, device=device, dtype=dtype)
        return state

    def state_bytes(self, layout: ScaleLayout, batch: int = 1, dtype=torch.bfloat16) -> int:
        """Bytes of `init_state(batch, layout, dtype=dtype)`: constant over scales (no KV cache grows)."""
        recurrent = batch * self.heads * self.head_k_dim * self.head_v_dim * at_least_fp32(dtype).itemsize
        tails = batch * sum(self._conv_channels().values()) * (self.conv_size - 1) * dtype.itemsize
        return recurrent + tails

    def _projection_macs(self) -> int:
        """Multiply-adds per token of every linear layer and short conv (each applied once per token)."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv1d)))

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        """Analytic forward FLOPs over all L tokens (a multiply-add = 2). Counted: every projection (q/k/v/gate/o,
        low-rank gate, feature maps), the short convolutions, and the recurrence in its token-by-token form,
        H * (kv_flops * K * V + v_flops * V) per token. Not counted: norms, activations, rotary, gates' elementwise
        math, and the extra arithmetic of the chunked kernels (their intra-chunk quadratic part)."""
        per_head = self.kv_flops * self.head_k_dim * self.head_v_dim + self.v_flops * self.head_v_dim
        return batch * layout.L * (2 * self._projection_macs() + self.heads * per_head)

