"""ScaleAR: the scale-wise autoregressive model shared by VAR, M-VAR and every mixer of the suite.

Shape legend: B batch, L tokens of all scales, l tokens of one scale, C width, D condition width (= C),
Cv tokenizer code width, V vocabulary, K number of scales.
Teacher forcing (`forward`) and generation are kept apart, as DiT keeps `forward` and `forward_with_cfg`; both call
the same blocks, `forward` over the whole sequence and generation one scale at a time through each mixer's `step`
(`scale_logits`). The scale loop itself (guidance, drawing, the tokenizer) is
`varbench.backbones.sampling.ScaleSampler`; `generate` is its one-call shortcut.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from varbench.backbones.blocks import AdaLNBlock, SharedAdaLin, num_branches
from varbench.backbones.init import var_init_
from varbench.backbones.sampling import Generation, ScaleSampler
from varbench.layout import ScaleLayout
from varbench.mixers.base import State
from varbench.modules.fused import ln_modulate
from varbench.ops.backend import backend_of


class AdaLNBeforeHead(nn.Module):
    """Non-affine LayerNorm modulated by (scale, shift) from the condition, in that order (VAR's `head_nm`)."""

    def __init__(self, dim: int, cond_dim: int, norm_eps: float):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale_B1C, shift_B1C = self.ada_lin(cond_BD).view(-1, 1, 2, self.dim).unbind(2)
        return ln_modulate(x_BLC, scale_B1C.add(1), shift_B1C, self.ln_wo_grad.eps)


class ScaleAR(nn.Module):
    """Class-conditional next-scale prediction with a swappable inter-scale mixer and intra-scale branch.

    Args:
        mixer (Callable): factory `mixer(dim=, num_heads=, layer_idx=)` of the inter-scale mixer (a registry entry),
            or None (mixer=none: no inter-scale branch; a scale sees earlier ones through its input only).
        intra (Callable, Optional): factory of the intra-scale branch, or None (VAR). Default: None.
        depth (int, Optional): number of blocks; width and heads follow VAR's rule (64 * depth, depth). Default: 16.
        width (int, Optional): model width C; None means 64 * depth. Default: None.
        num_heads (int, Optional): attention heads; None means C / 64. Default: None.
        vocab_size (int, Optional): tokenizer codebook size V. Default: 4096.
        latent_dim (int, Optional): tokenizer code width Cv. Default: 32.
        num_classes (int, Optional): classes; index num_classes is the null class of CFG. Default: 1000.
        patch_nums (tuple, Optional): scale sides. Default: VAR-256.
        mlp_ratio (float, Optional): FFN width ratio. Default: 4.0.
        drop_path_rate (float, Optional): stochastic depth of the last block (linear from 0); None means
            0.1 * depth / 24 as VAR. Default: None.
        norm_eps (float, Optional): LayerNorm epsilon. Default: 1e-6.
        cond_drop_rate (float, Optional): probability of replacing a label by the null class in training. Default: 0.1.
        cond_drop_in_eval (bool, Optional): also drop labels in eval mode, as the official forward does (it
            affects VAR's reported validation loss). Default: False.
        init (dict, Optional): keyword arguments of `var_init_`. Default: VAR's defaults.
        shared_aln (bool, Optional): VAR's shared AdaLN (VAR-d36-s): one `shared_ada_lin` projection of the condition
            for the whole model plus a learned `ada_gss` offset per block, instead of an `ada_lin` per block.
            Default: False.
    """

    def __init__(self, *, mixer: Callable | None, intra: Callable | None = None, depth: int = 16,
                 width: int | None = None, num_heads: int | None = None, vocab_size: int = 4096, latent_dim: int = 32,
                 num_classes: int = 1000, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), mlp_ratio: float = 4.0,
                 drop_path_rate: float | None = None, norm_eps: float = 1e-6, cond_drop_rate: float = 0.1,
                 cond_drop_in_eval: bool = False, init: dict | None = None, shared_aln: bool = False):
        super().__init__()
        self.layout = ScaleLayout(tuple(patch_nums))
        self.depth, self.width = depth, width or 64 * depth
        self.num_heads = num_heads or self.width // 64
        self.vocab_size, self.latent_dim, self.num_classes = vocab_size, latent_dim, num_classes
        self.cond_drop_rate, self.cond_drop_in_eval = cond_drop_rate, cond_drop_in_eval
        C, L, K = self.width, self.layout.L, self.layout.num_scales
        init_std = (1 / C / 3) ** 0.5

        self.class_emb = nn.Embedding(num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.word_embed = nn.Linear(latent_dim, C)
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(K, C)
        for table in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(table, std=init_std)
        self.register_buffer("lvl_1L", self.layout.scale_ids().view(1, L), persistent=False)

        self.shared_ada_lin = SharedAdaLin(C, C, num_branches(mixer, intra)) if shared_aln else None
        rate = 0.1 * depth / 24 if drop_path_rate is None else drop_path_rate
        drop_rates = torch.linspace(0, rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([
            AdaLNBlock(C, C, mixer(dim=C, num_heads=self.num_heads, layer_idx=i) if mixer is not None else None,
                       intra(dim=C, num_heads=self.num_heads, layer_idx=i) if intra is not None else None,
                       mlp_ratio=mlp_ratio, drop_path=drop_rates[i], norm_eps=norm_eps, shared_aln=shared_aln)
            for i in range(depth)
        ])
        self.head_nm = AdaLNBeforeHead(C, C, norm_eps)
        self.head = nn.Linear(C, vocab_size)
        var_init_(self, **(init or {}))

    # ----- teacher forcing -----------------------------------------------------------------------------------
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor, *,
                inputs_checked: bool = False) -> torch.Tensor:
        """Logits (B, L, V) of every scale given the ground-truth inputs of scales 1..K-1
        (the tokenizer's teacher-forcing input, (B, L - 1, Cv)) and the class labels (num_classes = null).
        `inputs_checked`: the caller ran `check_labels` where the labels are cheap to read (the training loop, on
        the host before the move), so the forward does not read them back from the device (2 host syncs)."""
        self.check_inputs(label_B, x_BLCv_wo_first_l, inputs_checked)
        if self.cond_drop_rate > 0 and (self.training or self.cond_drop_in_eval):
            dropped = torch.rand(label_B.shape, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(dropped, self.num_classes, label_B)
        with torch.autocast(x_BLCv_wo_first_l.device.type, enabled=False):  # embeddings in fp32, as VAR
            cond_BD = self.class_emb(label_B)
            sos_B1C = cond_BD.unsqueeze(1) + self.pos_start
            x_BLC = torch.cat((sos_B1C, self.word_embed(x_BLCv_wo_first_l.to(self.word_embed.weight.dtype))), dim=1)
            x_BLC = x_BLC + self.lvl_embed(self.lvl_1L) + self.pos_1LC
        block_cond = self.block_condition(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, block_cond, self.layout)
        return self.logits(x_BLC, cond_BD)

    def block_condition(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """What every block's AdaLN reads: the class condition (B, D), or with shared_aln its one shared projection
        (B, 1, 3n, C), computed outside the fp32 embedding region as VAR does (the head always reads `cond_BD`)."""
        return cond_BD if self.shared_ada_lin is None else self.shared_ada_lin(cond_BD)

    def logits(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """The AdaLN head, computed on fp32 (or wider) activations and returned in that dtype, as VAR."""
        wide = torch.float64 if x_BLC.dtype == torch.float64 else torch.float32  # promote_types would be an op
        return self.head(self.head_nm(x_BLC.to(wide), cond_BD).to(wide)).to(wide)

    def check_inputs(self, label_B: torch.Tensor, x_BLCv: torch.Tensor, inputs_checked: bool = False) -> None:
        expected = (self.layout.L - 1, self.latent_dim)
        if x_BLCv.dim() != 3 or tuple(x_BLCv.shape[1:]) != expected:
            raise ValueError(f"teacher-forcing input must be (B, {expected[0]}, {expected[1]}), "
                             f"got {tuple(x_BLCv.shape)}")
        if label_B.shape != (x_BLCv.shape[0],):
            raise ValueError(f"labels must be ({x_BLCv.shape[0]},), got {tuple(label_B.shape)}")
        if not inputs_checked:
            self.check_labels(label_B)

    def check_labels(self, label_B: torch.Tensor) -> None:
        """A ValueError unless the labels are integers in [0, num_classes]; reads their values (on a device tensor,
        two host syncs: check host tensors where a step repeats it, as the training loop does)."""
        if torch.compiler.is_compiling():  # reading the values would break the graph and sync the host every step
            return
        if label_B.dtype not in (torch.int32, torch.int64) or label_B.numel() and not (
                0 <= int(label_B.min()) and int(label_B.max()) <= self.num_classes):
            raise ValueError(f"labels must be integers in [0, {self.num_classes}] ({self.num_classes} = null class), "
                             f"got {label_B.tolist()[:8]} ({label_B.dtype})")

    # ----- generation ----------------------------------------------------------------------------------------
    def generate(self, tokenizer, label_B: torch.Tensor, *, generator: torch.Generator | None = None,
                 forced_ids: list[torch.Tensor] | None = None, return_logits: bool = False, edit=None,
                 **settings) -> Generation:
        """Class-conditional generation, one scale at a time: `ScaleSampler(self, tokenizer, **settings)(label_B,
        generator=, forced_ids=, return_logits=, edit=)`. `settings` are the sampler's: cfg, top_k, top_p,
        more_smooth, cuda_graphs (see `varbench.backbones.sampling.ScaleSampler`). A new sampler per call, so CUDA
        graphs are captured for this call only: to replay them across calls, keep one `ScaleSampler`."""
        return ScaleSampler(self, tokenizer, **settings)(label_B, generator=generator, forced_ids=forced_ids,
                                                         return_logits=return_logits, edit=edit)

    def initial_states(self, batch: int, device, dtype: torch.dtype) -> list[State]:
        """The states before scale 0: every block's mixer state ({} for a block without an inter-scale mixer), then
        the model's own, the blocks' AdaLN rows ({} until `scale_logits` computes them at scale 0)."""
        return [{} if block.mixer is None else block.mixer.init_state(batch, self.layout, device, dtype)
                for block in self.blocks] + [{}]

    def scale_logits(self, x_2BlC: torch.Tensor, states: list[State], cond_2BD: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, list[State]]:
        """The model part of scale k of a generation: every block's `step` from `states`, then the head. Returns the
        unguided logits (2B, l, V) and the new states (a new list; what a CUDA graph of this scale captures).

        The blocks' AdaLN rows depend on the condition alone: they are computed at scale 0 and carried to the
        later scales in the last state (VAR's sampler recomputes them at every scale: at batch 1, where sampling
        is bound by kernel launches, that is 4 kernels more per block and scale). A CUDA graph of scale 0 computes
        them from its static condition; the later graphs read them as they read the mixers' states."""
        if len(states) != len(self.blocks) + 1:
            raise ValueError(f"scale {k}: {len(states)} states, expected {len(self.blocks) + 1} (one per block, then "
                             f"the model's): start from initial_states")
        *mixer_states, adaln = states
        if k == 0:
            block_cond = self.block_condition(cond_2BD)
            adaln = {f"block{i}": block.modulation(block_cond) for i, block in enumerate(self.blocks)}
        elif len(adaln) != len(self.blocks):
            raise ValueError(f"scale {k}: the states hold no AdaLN rows: pass the states scale_logits returned at "
                             f"scale {k - 1}")
        for i, block in enumerate(self.blocks):
            x_2BlC, mixer_states[i] = block.step(x_2BlC, mixer_states[i], adaln[f"block{i}"], self.layout, k)
        return self.logits(x_2BlC, cond_2BD), [*mixer_states, adaln]

    def set_fused_elementwise(self, on: bool) -> None:
        """Run the blocks' element-wise chains (AdaLN modulation, gated residuals, attention's q/k normalisation) as
        fused compiled kernels in eval mode (`varbench.modules.fused`), or as eager ops again. A speed option of
        sampling (task.fused_elementwise): the same arithmetic, rounded as Inductor's kernels round it."""
        for module in self.modules():
            if hasattr(module, "fused_elementwise"):
                module.fused_elementwise = bool(on)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def mixer_backend(self) -> str:
        """The kernel the inter-scale mixers run ("none" without an inter-scale branch): the one the latest call ran,
        else the one a call on the model's device would run (never "auto")."""
        return self.backends["mixer"]

    @property
    def backends(self) -> dict[str, str]:
        """The kernel each branch runs, as `mixer_backend` says it: {"mixer": ..., "intra": ...} (records name them)."""
        device = next(self.parameters()).device
        return {"mixer": backend_of(self.blocks[0].mixer, device), "intra": backend_of(self.blocks[0].intra, device)}

    def state_bytes(self, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
        """Inference state of every block's inter-scale mixer after the last scale (0 without one): VAR's KV cache,
        a recurrent state."""
        return sum(b.mixer.state_bytes(self.layout, batch, dtype) for b in self.blocks if b.mixer is not None)
