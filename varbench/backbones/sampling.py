"""Token sampling for scale-wise generation, as VAR does it: CFG ramp, top-k then top-p, optional Gumbel smoothing.

Shape legend: B batch, l tokens of the current scale, V vocabulary, Cv code width.
"""

from __future__ import annotations

import torch


def cfg_ramp(cfg: float, k: int, num_scales: int) -> float:
    """VAR's linear guidance ramp: no guidance at the first scale, full `cfg` at the last."""
    return cfg * k / max(num_scales - 1, 1)


def guide(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t) * conditional - t * unconditional; the batch holds the conditional half first."""
    cond_BlV, uncond_BlV = logits_2BlV.chunk(2)
    return (1 + t) * cond_BlV - t * uncond_BlV


def top_k_top_p_filter(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits to -inf outside the top-k, then outside the nucleus of mass `top_p` (the most likely token is
    always kept). Returns a new tensor."""
    logits_BlV = logits_BlV.clone()
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:
        kth_Bl1 = logits_BlV.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth_Bl1, -torch.inf)
    if top_p > 0:
        sorted_BlV, order_BlV = logits_BlV.sort(dim=-1, descending=False)
        drop_sorted = sorted_BlV.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits_BlV.masked_fill_(drop_sorted.scatter(-1, order_BlV, drop_sorted), -torch.inf)
    return logits_BlV


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
