"""ScaleAR: the scale-wise autoregressive model shared by VAR, M-VAR and every mixer of the suite.

Shape legend: B batch, L tokens of all scales, l tokens of one scale, C width, D condition width (= C),
Cv tokenizer code width, V vocabulary, K number of scales.
Teacher forcing (`forward`) and generation (`generate`) are kept apart, as DiT keeps `forward` and
`forward_with_cfg`; both call the same blocks, `forward` over the whole sequence and `generate` one scale at a
time through each mixer's `step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from varbench.backbones.blocks import AdaLNBlock, SharedAdaLin, num_branches
from varbench.backbones.graphs import GraphedScales, graph_key
from varbench.backbones.init import var_init_
from varbench.backbones.sampling import cfg_ramp, guide, gumbel_soft_codes, sample_ids
from varbench.layout import ScaleLayout
from varbench.mixers.base import State


class AdaLNBeforeHead(nn.Module):
    """Non-affine LayerNorm modulated by (scale, shift) from the condition, in that order (VAR's `head_nm`)."""

    def __init__(self, dim: int, cond_dim: int, norm_eps: float):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale_B1C, shift_B1C = self.ada_lin(cond_BD).view(-1, 1, 2, self.dim).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale_B1C.add(1)).add_(shift_B1C)


@dataclass
class Generation:
    """What `generate` returns: ids per scale, images in [0, 1], and (optionally) guided logits per scale."""

    ids: list[torch.Tensor]
    images: torch.Tensor
    logits: list[torch.Tensor] | None = None


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
        self._graphed_scales: dict[tuple, GraphedScales] = {}  # plain attribute: never in the state_dict
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
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) of every scale given the ground-truth inputs of scales 1..K-1
        (the tokenizer's teacher-forcing input, (B, L - 1, Cv)) and the class labels (num_classes = null)."""
        self.check_inputs(label_B, x_BLCv_wo_first_l)
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
        wide = torch.promote_types(x_BLC.dtype, torch.float32)
        return self.head(self.head_nm(x_BLC.to(wide), cond_BD).to(wide)).to(wide)

    def check_inputs(self, label_B: torch.Tensor, x_BLCv: torch.Tensor) -> None:
        expected = (self.layout.L - 1, self.latent_dim)
        if x_BLCv.dim() != 3 or tuple(x_BLCv.shape[1:]) != expected:
            raise ValueError(f"teacher-forcing input must be (B, {expected[0]}, {expected[1]}), "
                             f"got {tuple(x_BLCv.shape)}")
        if label_B.shape != (x_BLCv.shape[0],):
            raise ValueError(f"labels must be ({x_BLCv.shape[0]},), got {tuple(label_B.shape)}")
        self.check_labels(label_B)

    def check_labels(self, label_B: torch.Tensor) -> None:
        if torch.compiler.is_compiling():  # reading the values would break the graph and sync the host every step
            return
        if label_B.dtype not in (torch.int32, torch.int64) or label_B.numel() and not (
                0 <= int(label_B.min()) and int(label_B.max()) <= self.num_classes):
            raise ValueError(f"labels must be integers in [0, {self.num_classes}] ({self.num_classes} = null class), "
                             f"got {label_B.tolist()[:8]} ({label_B.dtype})")

    # ----- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, tokenizer, label_B: torch.Tensor, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                 more_smooth: bool = False, generator: torch.Generator | None = None,
                 forced_ids: list[torch.Tensor] | None = None, return_logits: bool = False,
                 sampler: str = "carry", cuda_graphs: bool = False, edit=None) -> Generation:
        """Class-conditional generation, one scale at a time, with classifier-free guidance on a doubled batch.

        Args:
            tokenizer: the multi-scale VQ-VAE (same patch_nums and code width as the model).
            label_B (Tensor): class labels (B,).
            cfg (float, Optional): guidance strength, ramped linearly over scales (zero at the first). Default: 1.5.
            top_k, top_p (Optional): filters applied to the guided logits (0 disables). Default: 0, 0.0.
            more_smooth (bool, Optional): Gumbel-softmax code mixtures instead of hard tokens (visualisation).
            generator (torch.Generator, Optional): the only source of randomness, for seeded sampling.
            forced_ids (list, Optional): teacher-force these ids per scale instead of sampling (parity checks).
            return_logits (bool, Optional): also return the guided logits of every scale. Default: False.
            sampler (str, Optional): "carry" (each mixer carries its state across scales) or "prefix_rerun"
                (the released M-VAR sampler: re-run every mixer over all earlier scales; a benchmark baseline).
            cuda_graphs (bool, Optional): replay the model part of each scale (blocks and head) as one CUDA graph
                per scale (`varbench.backbones.graphs`); sampling, guidance and the tokenizer stay eager. The first
                call per (batch, sampler, dtype, autocast dtype, device) captures them; later calls reuse them until
                `drop_cuda_graphs` or `train()`. CUDA only. Default: False.
            edit (Edit, Optional): zero-shot editing (`varbench.backbones.editing`): each scale's ids and codes are
                the image's own where the edit keeps them, before they update f_hat and the next input. Default: None.
        """
        if sampler not in ("carry", "prefix_rerun"):
            raise ValueError(f"sampler must be 'carry' or 'prefix_rerun', got {sampler!r}")
        if cuda_graphs and self.training:  # a graph would freeze stochastic depth's draws (and train() drops graphs)
            raise ValueError("cuda_graphs=True samples in eval mode: call model.eval() first")
        if cuda_graphs and (label_B.device.type != "cuda" or self.pos_start.device.type != "cuda"):
            raise ValueError(f"cuda_graphs=True needs a CUDA device (labels on {label_B.device}, model on "
                             f"{self.pos_start.device})")
        if tuple(tokenizer.patch_nums) != self.layout.patch_nums:
            raise ValueError(f"tokenizer patch_nums {tuple(tokenizer.patch_nums)} != model {self.layout.patch_nums}")
        self.check_labels(label_B)
        B, K, layout = label_B.shape[0], self.layout.num_scales, self.layout
        rerun = sampler == "prefix_rerun"

        cond_2BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))
        lvl_pos_1LC = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        x_2BlC = cond_2BD.unsqueeze(1) + self.pos_start + lvl_pos_1LC[:, :1]
        graphed = self.graphed_scales(cond_2BD, sampler) if cuda_graphs else None
        states = None if graphed is not None else self.initial_states(2 * B, x_2BlC.device, x_2BlC.dtype, rerun)
        f_hat = tokenizer.empty_fhat(B, x_2BlC.device)
        ids, all_logits = [], []
        for k in range(K):
            if graphed is not None:
                # the graph's own logits, overwritten at its next replay: `guide` below returns a new tensor
                logits_2BlV = graphed.run(k, x_2BlC)
            else:
                logits_2BlV, states = self.scale_logits(x_2BlC, states, cond_2BD, k, rerun)
            logits_BlV = guide(logits_2BlV, cfg_ramp(cfg, k, K))
            if return_logits:
                all_logits.append(logits_BlV)
            ids_Bl = forced_ids[k] if forced_ids is not None else sample_ids(logits_BlV, top_k, top_p, generator)
            if more_smooth and forced_ids is None:  # VAR draws the hard ids first, then the Gumbel noise
                p = layout.patch_nums[k]
                h_BlCv = gumbel_soft_codes(logits_BlV, tokenizer.quantize.embedding.weight, k, K, generator)
                h_BCvhw = h_BlCv.transpose(1, 2).reshape(B, self.latent_dim, p, p)
            else:
                h_BCvhw = tokenizer.embed_ids(ids_Bl, k)
            if edit is not None:  # the blended scale is what f_hat, the next input and so every mixer state see
                ids_Bl, h_BCvhw = edit.blend(k, ids_Bl, h_BCvhw, tokenizer)
            ids.append(ids_Bl)
            f_hat, next_BCvhw = tokenizer.next_scale_input(k, f_hat, h_BCvhw)
            if next_BCvhw is not None:
                next_BlCv = next_BCvhw.flatten(2).transpose(1, 2).to(self.word_embed.weight.dtype)
                x_BlC = self.word_embed(next_BlCv) + lvl_pos_1LC[:, layout.slice(k + 1)]
                x_2BlC = x_BlC.repeat(2, 1, 1)
        images = tokenizer.fhat_to_img(f_hat).add(1).mul(0.5)
        return Generation(ids=ids, images=images, logits=all_logits if return_logits else None)

    def initial_states(self, batch: int, device, dtype: torch.dtype, rerun: bool = False) -> list[State]:
        """Every block's mixer state before scale 0 ({} each for the prefix re-run, whose cache starts empty)."""
        return [{} if rerun or block.mixer is None else block.mixer.init_state(batch, self.layout, device, dtype)
                for block in self.blocks]

    def scale_logits(self, x_2BlC: torch.Tensor, states: list[State], cond_2BD: torch.Tensor, k: int,
                     rerun: bool = False) -> tuple[torch.Tensor, list[State]]:
        """The model part of scale k in `generate`: every block's `step` from `states`, then the head. Returns the
        unguided logits (2B, l, V) and the new states (a new list; what a CUDA graph of this scale captures)."""
        states = list(states)
        block_cond = self.block_condition(cond_2BD)  # per scale, as VAR's sampler (same values every scale)
        for i, block in enumerate(self.blocks):
            x_2BlC, states[i] = block.step(x_2BlC, states[i], block_cond, self.layout, k, prefix_rerun=rerun)
        return self.logits(x_2BlC, cond_2BD), states

    def graphed_scales(self, cond_2BD: torch.Tensor, sampler: str) -> GraphedScales:
        """The captured scales for this batch, sampler, dtype, autocast, device and weights, captured now on the
        first call of a key (that call pays the warm-up and capture), then reused; `begin` already called."""
        key = graph_key(self, cond_2BD, sampler)
        if key not in self._graphed_scales:
            self._graphed_scales[key] = GraphedScales(self, cond_2BD, sampler)
        graphed = self._graphed_scales[key]
        graphed.begin(cond_2BD)
        return graphed

    def drop_cuda_graphs(self) -> None:
        """Forget every captured sampling graph; their memory pools are freed with them."""
        self._graphed_scales = {}

    def train(self, mode: bool = True) -> "ScaleAR":
        """As `nn.Module.train`; entering training also drops the sampling graphs, so their memory goes to training
        (the next `generate(..., cuda_graphs=True)` captures again). `eval()` keeps them."""
        if mode:
            self.drop_cuda_graphs()
        return super().train(mode)

    def __getstate__(self) -> dict:
        # captured graphs hold device addresses: a copy or a pickle of the model starts without them
        return {**self.__dict__, "_graphed_scales": {}}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def mixer_backend(self) -> str:
        """The kernel the inter-scale mixers run ("none" without an inter-scale branch)."""
        mixer = self.blocks[0].mixer
        return "none" if mixer is None else mixer.backend

    def state_bytes(self, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
        """Inference state of every block's inter-scale mixer after the last scale (0 without one): VAR's KV cache,
        a recurrent state."""
        return sum(b.mixer.state_bytes(self.layout, batch, dtype) for b in self.blocks if b.mixer is not None)
