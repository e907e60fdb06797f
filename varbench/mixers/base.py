"""The contract every inter-scale token mixer implements.

Shape legend: B batch (2B under classifier-free guidance), L tokens of all scales, l tokens of the
current scale, C model width.

A mixer computes one function two ways:
- `forward(x_BLC, layout)` over the whole sequence (training, teacher forcing);
- `step(x_BlC, state, layout, k)` over one whole scale k, continuing from the state the earlier scales left.
States are plain dicts of tensors that pass through the call and come back; nothing is stored on the module,
so a CFG-doubled batch or two interleaved generations can never share state by accident.
A state may also carry weight terms (entries named `weights.<name>`): what a step derives from the weights alone
(attention's joined qkv bias, Mamba2's A = -exp(A_log)), computed by the first step of a generation and read by the
later ones instead of launching their kernels again at every scale. They have no batch dimension and are not state
memory (`state_nbytes`, `take_rows`). With CUDA graphs scale 0's graph computes them, so every replay reads the
weights it runs with.
"""

from __future__ import annotations

import torch
from torch import nn

from varbench.layout import ScaleLayout
from varbench.ops.backend import KernelChoice

State = dict[str, torch.Tensor]

# The libraries' parameter markers (mamba_ssm's and fla's names): keep the layer's own init through the model's init;
# never apply weight decay.
NO_REINIT, NO_WEIGHT_DECAY = "_no_reinit", "_no_weight_decay"


WEIGHT_TERMS = "weights."  # the name prefix of a state's weight terms


def carried_terms(state: State) -> State:
    """The weight terms `state` carries, by their names without the prefix ({} before a generation's first step)."""
    return {name[len(WEIGHT_TERMS):]: t for name, t in state.items() if name.startswith(WEIGHT_TERMS)}


def carry_terms(state: State, terms: State) -> State:
    """`state` with the weight terms `terms` added, for the next step."""
    return {**state, **{WEIGHT_TERMS + name: t for name, t in terms.items()}}


def state_nbytes(state: State) -> int:
    """Bytes held by an inference state (its weight terms are not state)."""
    return sum(t.numel() * t.element_size() for name, t in state.items() if not name.startswith(WEIGHT_TERMS))


def take_rows(state: State, index: torch.Tensor) -> State:
    """Select batch rows of every state tensor (batch is dim 0 of every state tensor; weight terms pass as they
    are)."""
    return {name: t if name.startswith(WEIGHT_TERMS) else t.index_select(0, index) for name, t in state.items()}


def run_steps(mixer: "TokenMixer", x_BLC: torch.Tensor, layout: ScaleLayout,
              dtype: torch.dtype | None = None) -> tuple[torch.Tensor, State]:
    """`mixer.step` chained over every scale from `init_state` (its dtype: `dtype`, default x's), as sampling runs
    one layer; returns the outputs of all scales `(B, L, C)` and the final state. Tests and parity scripts compare it
    with `forward`."""
    state = mixer.init_state(x_BLC.shape[0], layout, device=x_BLC.device, dtype=dtype or x_BLC.dtype)
    outs = []
    for k, x_BlC in enumerate(layout.split(x_BLC)):
        y_BlC, state = mixer.step(x_BlC, state, layout, k)
        outs.append(y_BlC)
    return torch.cat(outs, dim=1), state


def library_marked(model: nn.Module, marker: str) -> set[str]:
    """Full names of the parameters of `model` that carry `marker` (NO_REINIT or NO_WEIGHT_DECAY).

    A parameter is marked either by the attribute itself, as mamba_ssm and fla mark theirs (a library module used as
    it is), or by a module listing it, relative to itself, in `library_markers[marker]` (the mixers here). The listed
    names are what counts for our mixers: FSDP2's `fully_shard` and `deepcopy` replace parameter objects and lose
    their attributes, never a module's.
    """
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        names.update(prefix + rel for rel in getattr(module, "library_markers", {}).get(marker, ()))
        names.update(prefix + n for n, p in module.named_parameters(recurse=False) if getattr(p, marker, False))
    return names


class TokenMixer(KernelChoice, nn.Module):
    """Base class of inter-scale mixers. Subclasses call `choose_backend` in `__init__` and `run_backend(x)` in each
    call (varbench/ops/backend.py: the one kernel-dispatch convention).

    Class attributes:
        within_scale (str): "bidirectional" when tokens of one scale see each other (block-causal attention),
            "causal" when the mixer is a token-causal scan over the flattened sequence (Mamba, GLA, ...).
        rescale_out_proj (bool): VAR's init divides this mixer's output projection by sqrt(2*depth)
            (true for attention; M-VAR leaves Mamba2's out_proj alone).
        library_markers (dict[str, tuple[str, ...]]): parameters (names relative to the mixer) that its library
            marks: NO_REINIT (the backbone's init keeps the value the mixer gave them) and NO_WEIGHT_DECAY (the
            optimizer's no-decay group); read through `library_marked`.
    """

    within_scale = "causal"
    rescale_out_proj = False
    library_markers: dict[str, tuple[str, ...]] = {}

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, batch: int, layout: ScaleLayout, device=None, dtype=torch.float32) -> State:
        """The state before scale 0."""
        raise NotImplementedError

    def step(self, x_BlC: torch.Tensor, state: State, layout: ScaleLayout, k: int) -> tuple[torch.Tensor, State]:
        """Mix every token of scale k given the state after scales < k; return outputs and the new state. A step may
        write into the tensors of the state it is given (attention fills its preallocated KV cache in place): a
        caller that needs a state again after stepping from it keeps a copy."""
        raise NotImplementedError

    def weight_terms(self) -> State:
        """What `step` derives from the weights (or the configuration) alone, carried from scale 0 as the state's
        weight terms (the module docstring); none by default."""
        return {}

    def step_terms(self, state: State, k: int) -> State:
        """The weight terms of scale k's step: `weight_terms()` at scale 0 (or when `state` carries none), else the
        ones `state` carries."""
        return (carried_terms(state) if k else None) or self.weight_terms()

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        """Analytic forward FLOPs over the whole sequence (a multiply-add counts 2)."""
        raise NotImplementedError

    def state_bytes(self, layout: ScaleLayout, batch: int = 1, dtype=torch.bfloat16) -> int:
        """Analytic bytes of the inference state after the last scale (the largest state `step` carries).
        Tests check it against the real state; recurrent states are kept in fp32 whatever `dtype` is."""
        raise NotImplementedError

    def output_projection(self) -> nn.Linear | None:
        """The output projection that VAR's init rescales (see `rescale_out_proj`)."""
        return None
