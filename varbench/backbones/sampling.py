"""Token sampling for scale-wise generation, as VAR does it: CFG ramp, top-k then top-p, optional Gumbel smoothing,
and `ScaleSampler`, the scale loop that draws images from a `ScaleAR` with them.

Shape legend: B batch (2B: CFG-doubled), l tokens of the current scale, C width, D condition width, V vocabulary,
Cv code width, K number of scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from varbench.backbones.graphs import GraphCache
from varbench.utils.precision import drop_cached_weight_casts


def cfg_ramp(cfg: float, k: int, num_scales: int) -> float:
    """VAR's linear guidance ramp: no guidance at the first scale, full `cfg` at the last."""
    return cfg * k / max(num_scales - 1, 1)


def guide(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t) * conditional - t * unconditional; the batch holds the conditional half first."""
    cond_BlV, uncond_BlV = logits_2BlV.chunk(2)
    return (1 + t) * cond_BlV - t * uncond_BlV


def top_k_top_p_filter(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits to -inf outside the top-k, then outside the nucleus of mass `top_p` (the most likely token is
    always kept). Returns a new tensor (out-of-place masking: no copy of the input first, one op fewer per scale)."""
    V = logits_BlV.shape[-1]
    kept_BlV = logits_BlV
    if 0 < top_k < V:
        kth_Bl1 = kept_BlV.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        kept_BlV = kept_BlV.masked_fill(kept_BlV < kth_Bl1, -torch.inf)
    if top_p > 0:
        sorted_BlV, order_BlV = kept_BlV.sort(dim=-1, descending=False)
        drop_sorted = sorted_BlV.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        kept_BlV = kept_BlV.masked_fill(drop_sorted.scatter(-1, order_BlV, drop_sorted), -torch.inf)
    return kept_BlV.clone() if kept_BlV is logits_BlV else kept_BlV


def sample_ids(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per position (temperature 1) after top-k / top-p filtering: (B, l) int64."""
    B, l, V = logits_BlV.shape
    probs = top_k_top_p_filter(logits_BlV, top_k, top_p).softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).view(B, l)


def gumbel_soft_codes(logits_BlV: torch.Tensor, codebook_VCv: torch.Tensor, k: int, num_scales: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """VAR's `more_smooth` visualisation mode: a soft Gumbel-softmax mixture of code vectors instead of hard
    tokens, sharper at finer scales. Returns (B, l, Cv)."""
    ratio = k / max(num_scales - 1, 1)
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    gumbels = -torch.empty_like(logits_BlV).exponential_(generator=generator).log()
    soft_BlV = ((logits_BlV * (1 + ratio) + gumbels) / tau).softmax(dim=-1)
    return soft_BlV @ codebook_VCv.unsqueeze(0)


@dataclass
class Generation:
    """What a `ScaleSampler` returns: ids per scale, images in [0, 1], and (optionally) guided logits per scale."""

    ids: list[torch.Tensor]
    images: torch.Tensor
    logits: list[torch.Tensor] | None = None


class ScaleSampler:
    """Class-conditional generation with a `ScaleAR`, one scale at a time, with classifier-free guidance on a doubled
    batch: each scale runs every block's `step` (the mixers carry their state from scale to scale), then the head.

    Args:
        model (ScaleAR): the model (kept by reference: later weight updates in place are seen).
        tokenizer: the multi-scale VQ-VAE (same patch_nums and code width as the model).
        cfg (float, Optional): guidance strength, ramped linearly over scales (zero at the first). Default: 1.5.
        top_k, top_p (Optional): filters applied to the guided logits (0 disables). Default: 0, 0.0.
        more_smooth (bool, Optional): Gumbel-softmax code mixtures instead of hard tokens (visualisation).
        cuda_graphs (bool, Optional): replay the model part of each scale (blocks and head) as one CUDA graph per
            scale (`varbench.backbones.graphs`); sampling, guidance and the tokenizer stay eager. The first call per
            (batch, dtype, autocast dtype, device) captures them and this sampler keeps them for its later calls
            (until `drop_cuda_graphs`). CUDA and eval mode only. Default: False.
    """

    def __init__(self, model, tokenizer, *, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                 more_smooth: bool = False, cuda_graphs: bool = False):
        if tuple(tokenizer.patch_nums) != model.layout.patch_nums:
            raise ValueError(f"tokenizer patch_nums {tuple(tokenizer.patch_nums)} != model {model.layout.patch_nums}")
        self.model, self.tokenizer = model, tokenizer
        self.cfg, self.top_k, self.top_p, self.more_smooth = cfg, top_k, top_p, more_smooth
        self.graphs = GraphCache() if cuda_graphs else None

    def drop_cuda_graphs(self) -> None:
        """Forget every captured graph (their memory pools are freed); the next call captures again."""
        if self.graphs is not None:
            self.graphs.clear()

    @torch.no_grad()
    def __call__(self, label_B: torch.Tensor, *, generator: torch.Generator | None = None,
                 forced_ids: list[torch.Tensor] | None = None, return_logits: bool = False,
                 edit=None) -> Generation:
        """Images of the classes `label_B` (B,).

        Args:
            generator (torch.Generator, Optional): the only source of randomness, for seeded sampling.
            forced_ids (list, Optional): teacher-force these ids per scale instead of sampling (parity checks).
            return_logits (bool, Optional): also return the guided logits of every scale. Default: False.
            edit (Edit, Optional): zero-shot editing (`varbench.backbones.editing`): each scale's ids and codes are
                the image's own where the edit keeps them, before they update f_hat and the next input. Default: None.
        """
        self.check_device(label_B)
        self.model.check_labels(label_B)
        ids, f_hat, all_logits = self.scales(label_B, generator, forced_ids, return_logits, edit)
        # decoded after `scales` returned: its mixer states (VAR's KV cache) and last logits are freed by then, and
        # the weight casts autocast cached for the scales are dropped, so the decoder's activations stack on none
        # of them (the official sampler, too, drops its cache first)
        drop_cached_weight_casts()
        images = self.tokenizer.fhat_to_img(f_hat).add(1).mul(0.5)
        return Generation(ids=ids, images=images, logits=all_logits if return_logits else None)

    def scales(self, label_B: torch.Tensor, generator: torch.Generator | None, forced_ids: list[torch.Tensor] | None,
               return_logits: bool, edit) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """The scale loop: ids per scale, the final f_hat (B, Cv, h, w) and, with `return_logits`, the guided logits
        per scale. The mixer states live only inside this call."""
        model, tokenizer, layout = self.model, self.tokenizer, self.model.layout
        B, K = label_B.shape[0], layout.num_scales
        cond_2BD = model.class_emb(torch.cat((label_B, torch.full_like(label_B, model.num_classes))))
        lvl_pos_1LC = model.lvl_embed(model.lvl_1L) + model.pos_1LC
        x_2BlC = cond_2BD.unsqueeze(1) + model.pos_start + lvl_pos_1LC[:, :1]
        graphed = self.graphs.begin(model, cond_2BD) if self.graphs is not None else None
        states = None if graphed is not None else model.initial_states(2 * B, x_2BlC.device, x_2BlC.dtype)
        f_hat = tokenizer.empty_fhat(B, x_2BlC.device)
        ids, all_logits = [], []
        for k in range(K):
            if graphed is not None:
                # the graph's own logits, overwritten at its next replay: `guide` below returns a new tensor
                logits_2BlV = graphed.run(k, x_2BlC)
            else:
                logits_2BlV, states = model.scale_logits(x_2BlC, states, cond_2BD, k)
            logits_BlV = guide(logits_2BlV, cfg_ramp(self.cfg, k, K))
            if return_logits:
                all_logits.append(logits_BlV)
            ids_Bl, h_BCvhw = self.draw(logits_BlV, k, forced_ids, generator)
            if edit is not None:  # the blended scale is what f_hat, the next input and so every mixer state see
                ids_Bl, h_BCvhw = edit.blend(k, ids_Bl, h_BCvhw, tokenizer)
            ids.append(ids_Bl)
            f_hat, next_BCvhw = tokenizer.next_scale_input(k, f_hat, h_BCvhw)
            if next_BCvhw is not None:
                next_BlCv = next_BCvhw.flatten(2).transpose(1, 2).to(model.word_embed.weight.dtype)
                x_BlC = model.word_embed(next_BlCv) + lvl_pos_1LC[:, layout.slice(k + 1)]
                x_2BlC = x_BlC.repeat(2, 1, 1)
        return ids, f_hat, all_logits

    def draw(self, logits_BlV: torch.Tensor, k: int, forced_ids: list[torch.Tensor] | None,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale k's ids (B, l) and their code map (B, Cv, p, p): drawn from the guided logits, or forced."""
        ids_Bl = forced_ids[k] if forced_ids is not None else sample_ids(logits_BlV, self.top_k, self.top_p, generator)
        if self.more_smooth and forced_ids is None:  # VAR draws the hard ids first, then the Gumbel noise
            B, p, K = logits_BlV.shape[0], self.model.layout.patch_nums[k], self.model.layout.num_scales
            h_BlCv = gumbel_soft_codes(logits_BlV, self.tokenizer.quantize.embedding.weight, k, K, generator)
            return ids_Bl, h_BlCv.transpose(1, 2).reshape(B, self.model.latent_dim, p, p)
        return ids_Bl, self.tokenizer.embed_ids(ids_Bl, k)

    def check_device(self, label_B: torch.Tensor) -> None:
        """CUDA graphs need the model in eval mode and the labels and the model on a CUDA device."""
        if self.graphs is None:
            return
        if self.model.training:  # a graph would freeze stochastic depth's draws
            raise ValueError("cuda_graphs=True samples in eval mode: call model.eval() first")
        if label_B.device.type != "cuda" or self.model.pos_start.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device (labels on {label_B.device}, model on "
                             f"{self.model.pos_start.device})")
