"""Decode modes: how a tokenizer runs its latent -> image decoder at inference (sampling, evaluation, bench).

- "eager": the decoder as it is trained, NCHW (the reference; the only mode training ever uses).
- "channels_last": the decoder's weights and activations in `torch.channels_last` (NHWC) memory format. The same
  arithmetic; cuDNN picks its NHWC convolutions, much faster in bf16 on Hopper than NCHW. Other algorithms, so the
  images may differ from eager in the last bits (fp32 round-off; bf16 round-off under bf16 autocast). Caveat: the
  CUDA GroupNorm of torch 2.14 has no NHWC kernel (it copies a channels_last input to NCHW, and the next convolution
  copies back), so whether the faster convolutions pay for those copies is measured, not assumed:
  benchmarks/decode_modes.py.
  In both channels_last modes a narrow convolution (the RGB one: 3 output channels) computes 32, the extra ones zero
  filters, and returns its own (`PaddedOutputConv2d`): cuDNN's NHWC engine runs a direct kernel without tensor cores
  for 3, 8 or 16 output channels, and an implicit GEMM from 32 (VAR's 160 -> 3 convolution at 256 px, batch 64, bf16,
  one H100, session 34, benchmarks/narrow_conv.py: 24.4 ms with 3, 24.6 with 8, 2.2 with 32; 3.8 in NCHW).
- "compiled": channels_last plus `torch.compile` of the decoder at fixed shapes (one compile per latent shape,
  dtype and autocast, cached on the tokenizer): Inductor lowers GroupNorm itself (no layout copies) and fuses it with
  SiLU and the casts around it.
- "graphs" (CUDA only): eager's own kernels, captured once per latent shape, dtype, autocast dtype and weights in a
  CUDA graph and replayed with one launch, so the images are eager's. At small batches the decode is bound by
  kernel launches (VAR's VQ-VAE at batch 1: about 13 ms eager on an H200 for well under 1 ms of arithmetic); each
  capture keeps its activations in its own memory pool for as long as the tokenizer keeps the mode, so it suits
  small batches, not a 64-image decode.

Orthogonal to the mode, `max_batch` (`tokenizer.set_decode_batch(n)`) decodes at most n latents per call of the mode
and concatenates the images: the decode's activations, not the model, set the peak memory of a large sampling batch
(VAR's VQ-VAE at 256 px: most of batch 64's 12.2 GiB), and each image is decoded alone (GroupNorm, convolutions and
attention are per image), so a chunk changes only which kernels cuDNN picks for the smaller batch. None (the
default) decodes the whole batch at once, as the official code does.

`auto` (the tasks' default, `resolve_decode_mode`) is eager, as measured (benchmarks/decode_modes.py on an H200,
results/gpu/h200/bench_s9.jsonl, VAR's VQ-VAE at 256 px, bf16): channels_last is slower at batch 1 and 64;
compiled is faster but compiles for 19-37 s per batch shape, more than it saves in a 10k-sample evaluation. The
others run only when asked. A tokenizer starts eager; `tokenizer.set_decode_mode(mode)` switches it (the
tasks do, and record the mode). The mode changes how the weights are laid out in memory, never their values:
state-dict names and bytes (as `weights_sha256` hashes them) are the same in every mode.

Shape legend: B batch, C latent channels, h w latent side, 3 RGB, H W image side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from varbench.utils.precision import active_autocast_dtype, caller_autocast

AUTO = "auto"
DECODE_MODES = ("eager", "channels_last", "compiled", "graphs")
OUT_CHANNELS_MULTIPLE = 32  # the channels_last modes' convolutions compute a multiple of this many output channels


class PaddedOutputConv2d(nn.Conv2d):
    """A Conv2d computing its output channels padded with zero filters to a multiple of OUT_CHANNELS_MULTIPLE, and
    returning its own: the channels_last modes' form of a decoder's RGB convolution. Each real channel is the same
    sum (in another cuDNN algorithm's order). No parameter of its own: `LatentDecoder.set_mode` swaps a Conv2d's
    class to it and back, so the state-dict names and bytes stay the Conv2d's."""

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        extra = -self.out_channels % OUT_CHANNELS_MULTIPLE
        weight = F.pad(self.weight, (0, 0, 0, 0, 0, 0, 0, extra)).contiguous(memory_format=torch.channels_last)
        bias = None if self.bias is None else F.pad(self.bias, (0, extra))
        return self._conv_forward(x_BChw, weight, bias)[:, :self.out_channels]


def lay_out(stage: nn.Module, layout: torch.memory_format) -> None:
    """`stage`'s weights in `layout`, and in channels_last its narrow convolutions (output channels not a multiple
    of OUT_CHANNELS_MULTIPLE) as `PaddedOutputConv2d`; back to Conv2d otherwise."""
    stage.to(memory_format=layout)
    for conv in stage.modules():
        if type(conv) in (nn.Conv2d, PaddedOutputConv2d) and conv.out_channels % OUT_CHANNELS_MULTIPLE:
            conv.__class__ = PaddedOutputConv2d if layout == torch.channels_last else nn.Conv2d


def resolve_decode_mode(value, key: str, device: torch.device | str) -> str:
    """`value` of config key `key` (a decode mode or "auto") as the mode to run on `device`. auto is eager on every
    device: on an H200 channels_last lost and compiled paid off only past a few hundred batches (module docstring)."""
    if value == AUTO:
        return "eager"
    if value == "graphs" and torch.device(device).type != "cuda":
        raise ValueError(f"{key}=graphs replays CUDA graphs: it needs a CUDA device, not {device}; on this device use "
                         f"one of {[m for m in DECODE_MODES if m != 'graphs']} or {AUTO}")
    if value in DECODE_MODES:
        return value
    raise ValueError(f"{key} must be one of {[*DECODE_MODES, AUTO]}, got {value!r}")


class LatentDecoder:
    """A tokenizer's latent -> image path (its modules applied in order, e.g. post_quant_conv then decoder) run in one
    decode mode. Deliberately not an nn.Module: held by the tokenizer as a plain attribute, it adds no state-dict keys,
    and the compiled function it caches stays out of `modules()` and copies (`__getstate__`).

    Args:
        *modules (nn.Module): the stages, each a (B, C, h, w) -> (B, C', H', W') map; the tokenizer's own submodules.
    """

    def __init__(self, *modules: nn.Module):
        self.stages = modules
        self.mode = "eager"
        self.max_batch: int | None = None  # latents per decode call (None: the whole batch)
        self.compiled = None  # torch.compile of `forward`, built on the first compiled call
        self.graphs: dict[tuple, tuple] = {}  # graphs mode: key -> (graph, static input, static output)

    def set_mode(self, mode: str) -> None:
        """Switch to `mode` (one of DECODE_MODES): lays the stages' weights out as that mode runs them (channels_last,
        with padded narrow convolutions, or back to contiguous for eager, whose NCHW kernels a channels_last weight
        would change) and forgets any compiled function. The mode it is in already is kept as it is (with its
        compiled shapes)."""
        if mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {list(DECODE_MODES)}, got {mode!r}")
        if mode == self.mode:
            return
        layout = torch.contiguous_format if mode in ("eager", "graphs") else torch.channels_last
        for stage in self.stages:
            lay_out(stage, layout)
        self.mode, self.compiled, self.graphs = mode, None, {}

    def set_max_batch(self, max_batch: int | None) -> None:
        """Decode at most `max_batch` latents per call (None: the whole batch at once)."""
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"decode batch must be a positive integer or None (the whole batch), got {max_batch!r}")
        self.max_batch = max_batch

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            z_BChw = stage(z_BChw)
        return z_BChw

    def __call__(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """The image (B, 3, H, W) of a latent, contiguous (NCHW) in every mode; `max_batch` latents at a time."""
        if self.max_batch is None or len(z_BChw) <= self.max_batch:
            return self.decode_in_mode(z_BChw)
        return torch.cat([self.decode_in_mode(chunk) for chunk in z_BChw.split(self.max_batch)])

    def decode_in_mode(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """One decode call in the current mode."""
        if self.mode == "eager":
            return self.forward(z_BChw)
        if self.mode == "graphs":
            return self.replay(z_BChw)
        z_BChw = z_BChw.contiguous(memory_format=torch.channels_last)
        if self.mode == "compiled":
            if self.compiled is None:  # one graph (a break is an error), specialised per shape: a new batch recompiles
                self.compiled = torch.compile(self.forward, dynamic=False, fullgraph=True)
            return self.compiled(z_BChw).contiguous()
        return self.forward(z_BChw).contiguous()

    def replay(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """`forward` as a CUDA graph captured for this latent's shape and dtype, the caller's autocast and the
        stages' weights (by address: a graph reads them where they were at capture), then replayed."""
        if not z_BChw.is_cuda:
            raise ValueError(f"decode mode 'graphs' needs a CUDA latent, got one on {z_BChw.device}")
        autocast = active_autocast_dtype("cuda")
        weights = tuple(t.data_ptr() for stage in self.stages for t in stage.parameters())
        key = (tuple(z_BChw.shape), z_BChw.dtype, z_BChw.device, autocast, weights)
        if key not in self.graphs:
            static_BChw = z_BChw.clone()
            side, main = torch.cuda.Stream(z_BChw.device), torch.cuda.current_stream(z_BChw.device)
            side.wait_stream(main)
            with torch.cuda.stream(side), caller_autocast():  # warm-up: cuDNN's algorithm choice happens here
                self.forward(static_BChw)
            main.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), caller_autocast():
                static_out = self.forward(static_BChw)
            self.graphs[key] = (graph, static_BChw, static_out)
        graph, static_BChw, static_out = self.graphs[key]
        static_BChw.copy_(z_BChw)
        graph.replay()
        return static_out.clone()  # the static output is overwritten by the next replay

    def __getstate__(self) -> dict:
        # a copy compiles and captures its own (neither a compiled function nor a CUDA graph is copyable)
        return {**self.__dict__, "compiled": None, "graphs": {}}


class DecodeModes:
    """What a tokenizer (an nn.Module with a `latent_decoder`) exposes of its decode mode; mixed into
    MultiScaleVQVAE and VQF16."""

    latent_decoder: LatentDecoder

    @property
    def decode_mode(self) -> str:
        """The decode mode its inference decodes run in ("eager" until `set_decode_mode`)."""
        return self.latent_decoder.mode

    def set_decode_mode(self, mode: str) -> None:
        """Run the inference decodes (`fhat_to_img`, `decode`, `ids_to_img`) in `mode`: "eager", "channels_last",
        "compiled" or "graphs" (see `varbench.tokenizers.fast_decode`). Training's forward always runs eager."""
        self.latent_decoder.set_mode(mode)

    @property
    def decode_batch(self) -> int | None:
        """Latents per inference decode call (None: the whole batch at once, the default)."""
        return self.latent_decoder.max_batch

    def set_decode_batch(self, max_batch: int | None) -> None:
        """Decode at most `max_batch` latents per call, in the current mode, and concatenate the images."""
        self.latent_decoder.set_max_batch(max_batch)
