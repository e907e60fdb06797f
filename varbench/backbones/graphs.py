"""CUDA-graph replay of the model part of each scale (or token step) of a generation.

Shape legend: 2B CFG-doubled batch, l tokens of one scale, C width, D condition width, V vocabulary, K scales.
At small batch, sampling is bound by Python and kernel launches, not by the GPU: VAR-d16 launches tens of kernels
per block, 16 blocks, 10 scales. `GraphedScales` captures one `torch.cuda.CUDAGraph` per scale k of
`model.scale_logits` (every block's `step`, then the head) and replays it with one launch. Sampling the ids,
guidance, the tokenizer and the next scale's input stay eager, as without graphs. A `GraphCache` keeps the captures
of one sampler (`varbench.backbones.sampling.ScaleSampler`), never the model: they live as long as the sampler.

A captured graph reads its inputs, its states and the weights at the addresses they had at capture, so it is valid
for one `graph_key` only: batch, activation dtype, autocast dtype, device, and the weights' addresses
(`model.half()` or `.to()` moves them; an in-place update such as `load_state_dict` does not, and the graphs see it).
Every mixer's `step` must be capturable: no host syncs, no CPU -> GPU copies.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from varbench.mixers.base import State
from varbench.utils.precision import active_autocast_dtype, caller_autocast


def graph_key(model: nn.Module, cond_2BD: torch.Tensor) -> tuple:
    """What one set of graphs is valid for (see the module docstring)."""
    autocast = active_autocast_dtype("cuda")
    weights = tuple(t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers()))
    return cond_2BD.shape, cond_2BD.dtype, autocast, cond_2BD.device, weights


class GraphedScales:
    """One CUDA graph per scale of `model.scale_logits` for a fixed `graph_key`, all in one memory pool.

    Graph k reads the static scale input `x_2BlC[k]`, the static condition and the states graph k - 1 wrote (graph 0:
    the static initial states), and writes static logits and states (graph 0 also the blocks' AdaLN rows, computed
    from the static condition and carried to the later graphs in the states, see `ScaleAR.scale_logits`). The graphs
    share their pool, which is safe because they always replay in the order they were captured (0..K-1) and never
    concurrently.

    Args:
        model (ScaleAR): the model; it is not kept (the graphs hold its weights by address).
        cond_2BD (Tensor): the class embeddings (conditional half first) of the generation that captures.
    """

    def __init__(self, model: nn.Module, cond_2BD: torch.Tensor):
        batch, device, dtype = cond_2BD.shape[0], cond_2BD.device, cond_2BD.dtype
        self.cond_2BD = cond_2BD.clone()
        self.x_2BlC = [torch.zeros(batch, l, model.width, device=device, dtype=dtype) for l in model.layout.lengths]
        self.states = model.initial_states(batch, device, dtype)
        # a pristine copy: `begin` restores it, since a mixer may update its state in place
        self.fresh = [{name: t.clone() for name, t in state.items()} for state in self.states]
        self.warm_up(model)
        self.graphs, self.logits_2BlV = self.capture(model)

    def warm_up(self, model: nn.Module) -> None:
        """Run every scale once eagerly on a side stream, so that Triton autotuning, cuBLAS handles, torch.compile
        and lazy imports happen before capture, where they are not allowed."""
        side, main = torch.cuda.Stream(self.cond_2BD.device), torch.cuda.current_stream(self.cond_2BD.device)
        side.wait_stream(main)
        with torch.cuda.stream(side), caller_autocast():
            states = self.states
            for k, x_2BlC in enumerate(self.x_2BlC):
                _, states = model.scale_logits(x_2BlC, states, self.cond_2BD, k)
        main.wait_stream(side)
        self.reset_states()

    def capture(self, model: nn.Module) -> tuple[list[torch.cuda.CUDAGraph], list[torch.Tensor]]:
        """Capture scales 0..K-1 in order into one pool; returns the graphs and their static logits (2B, l, V)."""
        pool, graphs, logits = torch.cuda.graph_pool_handle(), [], []
        states: list[State] = self.states
        for k, x_2BlC in enumerate(self.x_2BlC):
            graph = torch.cuda.CUDAGraph()
            # the inner autocast is entered inside the capture, so its casts are recorded into this graph
            with torch.cuda.graph(graph, pool=pool), caller_autocast():
                logits_2BlV, states = model.scale_logits(x_2BlC, states, self.cond_2BD, k)
            graphs.append(graph)
            logits.append(logits_2BlV)
        return graphs, logits

    def reset_states(self) -> None:
        """Put the initial states back (the graphs and the warm-up never allocate them anew)."""
        for state, fresh in zip(self.states, self.fresh):
            for name, t in state.items():
                t.copy_(fresh[name])

    def begin(self, cond_2BD: torch.Tensor) -> None:
        """Start a generation: the condition of this batch, and the states before scale 0."""
        self.cond_2BD.copy_(cond_2BD)
        self.reset_states()

    def run(self, k: int, x_2BlC: torch.Tensor) -> torch.Tensor:
        """Replay scale k on the input `x_2BlC` (copied into the graph's own buffer) and return the graph's static
        unguided logits (2B, l, V). They are overwritten when scale k replays again (the next generation): read or
        clone them first. Scales must run in order 0..K-1 after `begin`."""
        static_2BlC = self.x_2BlC[k]
        if x_2BlC.shape != static_2BlC.shape or x_2BlC.dtype != static_2BlC.dtype:
            raise ValueError(f"scale {k}: graphed input is {tuple(static_2BlC.shape)} {static_2BlC.dtype}, "
                             f"got {tuple(x_2BlC.shape)} {x_2BlC.dtype}")
        static_2BlC.copy_(x_2BlC)
        self.graphs[k].replay()
        return self.logits_2BlV[k]


class GraphCache:
    """The `GraphedScales` of one sampler, one per `graph_key`, captured on first use. A sampler owns it (not the
    model): the graphs hold device addresses and memory pools, so they go with the sampler, never into a model's
    copy, pickle or state_dict."""

    def __init__(self):
        self.graphed: dict[tuple, GraphedScales] = {}

    def __len__(self) -> int:
        return len(self.graphed)

    def begin(self, model: nn.Module, cond_2BD: torch.Tensor) -> GraphedScales:
        """The graphs for this model, batch, dtype, autocast and device (captured now if new; this call then pays
        the warm-up and the capture), started for a generation with this condition (`GraphedScales.begin`)."""
        key = graph_key(model, cond_2BD)
        if key not in self.graphed:
            self.graphed[key] = GraphedScales(model, cond_2BD)
        self.graphed[key].begin(cond_2BD)
        return self.graphed[key]

    def clear(self) -> None:
        """Forget every capture; their memory pools are freed with them."""
        self.graphed = {}
