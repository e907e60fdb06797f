"""RasterAR: class-conditional raster-order next-token prediction (AiM, hp-l33/AiM; LlamaGen-style with attention).

Shape legend: B batch (2B under guidance), N image tokens (h*w, row-major), L = N input positions (the class token,
then tokens 0..N-2), C width, V vocabulary, G adaLN groups.

The same mixer registry as ScaleAR builds the token mixers; the sequence is laid out by a `RasterLayout`, in which
every token is its own "scale", so a mixer's `step(x, state, layout, k)` advances exactly one token with its carried
state (Mamba2: conv tail + SSM state; attention: the KV cache). Teacher forcing (`forward`) and token-by-token
generation (`generate`) are kept apart and run the same blocks.

Position ids in generation (`sample_positions`):
- "training" (default): the token fed at step t (token t - 1) gets position t - 1, as in the training forward, so
  generation computes exactly the function the model was trained on (the step == forward tests check it).
- "official": position t, as AiM's `decode()` does (`position_ids = seqlen_offset`). The released AiM checkpoints
  were sampled, and their FIDs measured, this way; `model=aim_b|aim_l|aim_xl` selects it. The golden set C shows the
  two paths differ from the second token on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from varbench.backbones.graphs import GraphCache
from varbench.backbones.init import aim_init_
from varbench.backbones.raster_blocks import AiMBlock, FinalLayer
from varbench.backbones.sampling import top_k_top_p_filter
from varbench.layout import RasterLayout
from varbench.mixers.base import State, TokenMixer
from varbench.modules import RMSNorm
from varbench.ops.backend import backend_of
from varbench.utils.precision import drop_cached_weight_casts

SAMPLE_POSITIONS = ("training", "official")


def raster_mixers() -> list[str]:
    """Registry mixers that can advance one token at a time (their class implements `step`)."""
    from hydra.utils import get_class

    from varbench.registry import list_options, load_option
    names = []
    for name in list_options("mixer"):
        target = load_option("mixer", name).get("_target_")
        if target is not None and get_class(target).step is not TokenMixer.step:
            names.append(name)
    return names


@dataclass
class RasterGeneration:
    """What `generate` returns: ids (B, N), images in [0, 1] (with a tokenizer) and the guided logits (B, N, V)."""

    ids: torch.Tensor
    images: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class RasterAR(nn.Module):
    """AiM's AR model with a swappable token mixer.

    Args:
        mixer (Callable): factory `mixer(dim=, num_heads=, layer_idx=)` of the token mixer (a registry entry).
        depth (int, Optional): blocks (AiM `n_layer`). Default: 24.
        width (int, Optional): C (AiM `d_model`). Default: 768.
        num_heads (int, Optional): attention heads; None means C / 64. Default: None.
        vocab_size (int, Optional): V. Default: 16384.
        num_classes (int, Optional): classes; index num_classes is the null class. Default: 1000.
        num_tokens (int, Optional): N image tokens. Default: 256.
        adaln_group (bool, Optional): adaLN-group (a model-level table, G groups) instead of adaLN per block.
        num_groups (int, Optional): G (adaLN-group only). Default: 1.
        mlp_hidden (int, Optional): gated MLP width per block (AiM `d_intermediate`); 0: none. Default: 0.
        norm_eps (float, Optional): RMSNorm epsilon. Default: 1e-5.
        cond_drop_rate (float, Optional): label dropout to the null class in training mode (AiM's forward drops
            labels in eval mode too, e.g. for its validation loss; varbench's eval forward never). Default: 0.1.
        sample_positions (str, Optional): "training" or "official" (module docstring). Default: "training".
        init_std (float, Optional): std of the embedding tables (GPT-2 init). Default: 0.02.
    """

    def __init__(self, *, mixer: Callable | None, depth: int = 24, width: int = 768, num_heads: int | None = None,
                 vocab_size: int = 16384, num_classes: int = 1000, num_tokens: int = 256, adaln_group: bool = False,
                 num_groups: int = 1, mlp_hidden: int = 0, norm_eps: float = 1e-5, cond_drop_rate: float = 0.1,
                 sample_positions: str = "training", init_std: float = 0.02):
        super().__init__()
        self._graphed = GraphCache()  # one CUDA graph per token step, per graph key; never in the state_dict
        if mixer is None:
            raise ValueError(f"mixer 'none' cannot run in raster order (no token would see another); "
                             f"mixers that can: {raster_mixers()}")
        if sample_positions not in SAMPLE_POSITIONS:
            raise ValueError(f"sample_positions must be one of {SAMPLE_POSITIONS}, got {sample_positions!r}")
        if adaln_group and num_groups < 1:
            raise ValueError(f"num_groups must be >= 1 with adaln_group, got {num_groups}")
        C = width
        self.depth, self.width, self.vocab_size, self.num_classes = depth, C, vocab_size, num_classes
        self.num_tokens, self.cond_drop_rate, self.sample_positions = num_tokens, cond_drop_rate, sample_positions
        self.num_groups = num_groups if adaln_group else 1
        self.layout = RasterLayout(num_tokens)
        self.class_emb = nn.Embedding(num_classes + 1, C)
        self.word_embed = nn.Embedding(vocab_size, C)  # also the output head (tied, as AiM)
        self.pos_embed = nn.Embedding(num_tokens + 1, C)  # AiM's table has one row more than it ever reads
        rows = 3 if mlp_hidden == 0 else 6
        self.adaln_group = nn.Sequential(nn.SiLU(), nn.Linear(C, self.num_groups * rows * C)) if adaln_group else None
        heads = num_heads or max(1, C // 64)
        self.blocks = nn.ModuleList([
            AiMBlock(C, mixer(dim=C, num_heads=heads, layer_idx=i), mlp_hidden, adaln_group, norm_eps)
            for i in range(depth)])
        for block in self.blocks:
            if type(block.mixer).step is TokenMixer.step:
                raise ValueError(f"mixer {type(block.mixer).__name__} cannot advance one token at a time (no step); "
                                 f"mixers that can: {raster_mixers()}")
        self.norm_f = RMSNorm(C, eps=norm_eps)
        self.head_nm = FinalLayer(C, norm_eps)
        aim_init_(self, init_std)

    # ----- shared pieces ---------------------------------------------------------------------------------------
    def adaln_inputs(self, cond_BC: torch.Tensor) -> list[torch.Tensor]:
        """Per block: the class embedding (adaLN) or its group's (B, F, C) chunk of the model-level table."""
        if self.adaln_group is None:
            return [cond_BC] * self.depth
        B = cond_BC.shape[0]
        groups = self.adaln_group(cond_BC).view(B, -1, self.width).chunk(self.num_groups, dim=1)
        return [groups[i % self.num_groups] for i in range(self.depth)]

    def logits(self, hidden_BLC, residual_BLC, cond_BC) -> torch.Tensor:
        """Final add + RMSNorm, the final adaLN layer, then the tied head: (B, L, V)."""
        h = self.head_nm(self.norm_f(hidden_BLC + residual_BLC, self.word_embed.weight.dtype), cond_BC)
        return nn.functional.linear(h, self.word_embed.weight)

    def check_labels(self, label_B: torch.Tensor) -> None:
        """A ValueError unless the labels are integers (B,) in [0, num_classes]; reads their values (on a device
        tensor, two host syncs: check host tensors where a step repeats it, as the training loop does)."""
        if label_B.dim() != 1 or label_B.dtype not in (torch.int32, torch.int64) or label_B.numel() and not (
                0 <= int(label_B.min()) and int(label_B.max()) <= self.num_classes):
            raise ValueError(f"labels must be integers (B,) in [0, {self.num_classes}] ({self.num_classes} = null "
                             f"class), got shape {tuple(label_B.shape)} {label_B.dtype}")

    def check_ids(self, ids_BN: torch.Tensor, batch: int, values: bool = True) -> None:
        """A ValueError unless the ids are integers (batch, num_tokens) and, with `values`, in [0, vocab_size) (reads
        them: on a device tensor, two host syncs)."""
        if ids_BN.dim() != 2 or ids_BN.shape != (batch, self.num_tokens) or ids_BN.dtype not in (torch.int32,
                                                                                                  torch.int64):
            raise ValueError(f"token ids must be integer ({batch}, num_tokens={self.num_tokens}), got "
                             f"{tuple(ids_BN.shape)} {ids_BN.dtype}")
        if values and ids_BN.numel() and not (0 <= int(ids_BN.min()) and int(ids_BN.max()) < self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size - 1}] (vocab_size {self.vocab_size}), got "
                             f"range [{int(ids_BN.min())}, {int(ids_BN.max())}]")

    # ----- teacher forcing -------------------------------------------------------------------------------------
    def forward(self, label_B: torch.Tensor, ids_BN: torch.Tensor, *, inputs_checked: bool = False) -> torch.Tensor:
        """Logits (B, N, V) of every token given the class and the ground-truth tokens (the loss target is ids_BN):
        input = [class embedding, tokens 0..N-2 + positions 0..N-2] (AiM's training forward).
        `inputs_checked`: the caller ran `check_labels`, and `check_ids` on host ids or took the ids from the
        tokenizer (valid by construction), as the training loop does; the forward then reads no value of either."""
        if not inputs_checked:
            self.check_labels(label_B)
        self.check_ids(ids_BN, label_B.shape[0], values=not inputs_checked)
        if self.training and self.cond_drop_rate > 0:
            dropped = torch.rand(label_B.shape, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(dropped, self.num_classes, label_B)
        cond_BC = self.class_emb(label_B)
        positions = torch.arange(self.num_tokens - 1, device=ids_BN.device)
        x_BLC = torch.cat((cond_BC.unsqueeze(1), self.word_embed(ids_BN[:, :-1]) + self.pos_embed(positions)), dim=1)
        hidden, residual = x_BLC, None
        for block, ada in zip(self.blocks, self.adaln_inputs(cond_BC)):
            hidden, residual = block(hidden, residual, ada, self.layout)
        return self.logits(hidden, residual, cond_BC)

    # ----- generation ------------------------------------------------------------------------------------------
    def initial_states(self, batch: int, device, dtype: torch.dtype) -> list[State]:
        return [block.mixer.init_state(batch, self.layout, device, dtype) for block in self.blocks]

    def scale_logits(self, x_B1C, states: list[State], cond_BC, t: int):
        """The model part of step t (ScaleAR's interface, so `GraphedScales` captures it: one CUDA graph per token):
        every block's `step` over input token t from `states`, then the head. Returns logits (B, 1, V), new states."""
        hidden, residual, states = x_B1C, None, list(states)
        for i, (block, ada) in enumerate(zip(self.blocks, self.adaln_inputs(cond_BC))):
            hidden, residual, states[i] = block.step(hidden, residual, ada, states[i], self.layout, t)
        return self.logits(hidden, residual, cond_BC), states

    def step_input(self, ids_B1: torch.Tensor, t: int, positions: str) -> torch.Tensor:
        """The input of step t >= 1: token t - 1 plus its position embedding (t - 1, or t with "official")."""
        position = t - 1 if positions == "training" else t
        return self.word_embed(ids_B1) + self.pos_embed.weight[position]

    @torch.no_grad()
    def generate(self, label_B: torch.Tensor, cfg: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, tokenizer=None,
                 forced_ids: torch.Tensor | None = None, return_logits: bool = False,
                 sample_positions: str | None = None, cuda_graphs: bool = False) -> RasterGeneration:
        """Class-conditional generation one token at a time, AiM's way.

        Args:
            label_B (Tensor): class labels (B,).
            cfg (float, Optional): guidance scale s, constant over tokens: uncond + (cond - uncond) * s on a batch
                doubled with the null class; the unconditional half is fed the conditional half's token. Default: 1.
            temperature (float, Optional): logits are divided by it before filtering (> 0; AiM's `sample` accepts but
                ignores it, so only 1.0 reproduces AiM). Default: 1.0.
            top_k, top_p (Optional): top-k, then nucleus filtering (0 / 1.0 disable). Default: 0, 1.0.
            generator (torch.Generator, Optional): the only source of randomness.
            tokenizer (Optional): a VQF16; when given, `images` are its decoding, mapped to [0, 1].
            forced_ids (Tensor, Optional): teacher-force these ids (B, N) instead of sampling (parity checks).
            return_logits (bool, Optional): also return the guided logits (B, N, V). Default: False.
            sample_positions (str, Optional): override of the model's `sample_positions`. Default: None.
            cuda_graphs (bool, Optional): replay each token step (blocks and head) as one CUDA graph (AiM's `cg=True`;
                `varbench.backbones.graphs`), captured on the first call per batch, dtype, autocast and device;
                sampling stays eager. CUDA and eval mode only. Default: False.
        """
        positions = sample_positions or self.sample_positions
        if positions not in SAMPLE_POSITIONS:
            raise ValueError(f"sample_positions must be one of {SAMPLE_POSITIONS}, got {positions!r}")
        if not temperature > 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
        self.check_labels(label_B)
        B = label_B.shape[0]
        if forced_ids is not None:
            self.check_ids(forced_ids, B)
        cond_2BC = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))
        graphed = self.graphed_steps(cond_2BC) if cuda_graphs else None
        states = None if graphed else self.initial_states(2 * B, cond_2BC.device, cond_2BC.dtype)
        x_2B1C, ids, all_logits = cond_2BC.unsqueeze(1), [], []
        for t in range(self.num_tokens):
            if graphed is not None:
                logits_2B1V = graphed.run(t, x_2B1C)  # overwritten at the next replay: guidance makes a new tensor
            else:
                logits_2B1V, states = self.scale_logits(x_2B1C, states, cond_2BC, t)
            cond_B1V, uncond_B1V = logits_2B1V.float().chunk(2)
            logits_B1V = uncond_B1V + (cond_B1V - uncond_B1V) * cfg
            if return_logits:
                all_logits.append(logits_B1V)
            if forced_ids is not None:
                ids_B1 = forced_ids[:, t:t + 1]
            else:
                nucleus = top_p if top_p < 1 else 0.0  # the shared filter's "off" is 0
                probs_BV = top_k_top_p_filter(logits_B1V / temperature, top_k, nucleus).softmax(-1).view(B, -1)
                ids_B1 = torch.multinomial(probs_BV, 1, generator=generator)
            ids.append(ids_B1)
            if t + 1 < self.num_tokens:
                x_2B1C = self.step_input(ids_B1, t + 1, positions).repeat(2, 1, 1)
        ids_BN = torch.cat(ids, dim=1)
        states = logits_2B1V = None  # freed before the decode: its activations do not stack on the KV cache,
        drop_cached_weight_casts()  # nor on the weight casts autocast cached for the tokens
        images = tokenizer.decode(ids_BN).add(1).mul(0.5) if tokenizer is not None else None
        return RasterGeneration(ids_BN, images, torch.cat(all_logits, 1) if return_logits else None)

    def graphed_steps(self, cond_2BC: torch.Tensor):
        """The captured token steps for this batch, dtype, autocast, device and weights (captured on first use)."""
        if self.training or cond_2BC.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs eval mode and a CUDA device (training={self.training}, "
                             f"device {cond_2BC.device})")
        return self._graphed.begin(self, cond_2BC)

    def train(self, mode: bool = True) -> "RasterAR":
        """As `nn.Module.train`; entering training drops the captured sampling graphs (their memory)."""
        if mode:
            self._graphed.clear()
        return super().train(mode)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_graphed": GraphCache()}  # graphs hold device addresses: copies start without them

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def mixer_backend(self) -> str:
        """The kernel the token mixers run (as ScaleAR's: never "auto")."""
        return self.backends["mixer"]

    @property
    def backends(self) -> dict[str, str]:
        """{"mixer": the kernel the token mixers run, "intra": "none"} (as ScaleAR's: a raster model has no intra
        branch)."""
        return {"mixer": backend_of(self.blocks[0].mixer, next(self.parameters()).device), "intra": "none"}

    def state_bytes(self, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
        """Inference state of every block's mixer after the last token: a KV cache, a recurrent state."""
        return sum(b.mixer.state_bytes(self.layout, batch, dtype) for b in self.blocks)

    def drop_cuda_graphs(self) -> None:
        """Release the captured token-step graphs (their memory pool), as ScaleAR's."""
        self._graphed = {}


def is_raster(model: nn.Module) -> bool:
    """Whether `model` (not a parallel or compile wrapper) is a RasterAR: it predicts and generates token by token in
    raster order, rather than scale by scale as a ScaleAR."""
    return isinstance(model, RasterAR)
