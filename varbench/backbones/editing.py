"""Zero-shot editing as VAR's `demo_zero_shot_edit.ipynb` does it: in-painting, out-painting and class-conditional
editing with the unchanged sampler, but for one blend per scale.

At scale k (side p_k), after the sampler has drawn the ids and embedded them, the image's own codes replace the
sampled ones where the keep mask, resized to p_k x p_k (bilinear, align_corners False) and thresholded > 0.5, is 1;
scales of at most 3 tokens keep the image's codes everywhere. The blended code map then updates f_hat and the next
scale's input, so every mixer's carried state (KV cache, recurrent state) is the state of the blended sequence.
A `ScaleSampler` call (or `ScaleAR.generate`) with `edit=Edit(...)` calls `Edit.blend` at each scale.
Class-conditional editing is in-painting with a class label; the null class (num_classes) gives unconditional
in-painting.

Shape legend: B batch, l tokens of one scale, Cv code width, p side of one scale, H side of the last scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("inpaint", "outpaint")
ALWAYS_KEPT_TOKENS = 3  # VAR keeps the image's codes at every scale of p * p <= 3 tokens


def check_box(box, name: str = "box") -> tuple[float, float, float, float]:
    """The box (y0, x0, y1, x1) as fractions of the image side, validated: each in [0, 1], y0 < y1, x0 < x1."""
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence) or len(box) != 4:
        raise ValueError(f"{name} must be 4 fractions [y0, x0, y1, x1] of the image side, got {box!r}")
    try:
        y0, x0, y1, x1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 4 numbers [y0, x0, y1, x1] in [0, 1], got {list(box)!r}") from None
    for key, value in zip(("y0", "x0", "y1", "x1"), (y0, x0, y1, x1)):
        if not 0.0 <= value <= 1.0:  # also refuses nan
            raise ValueError(f"{name}: {key} = {value} is outside the valid range [0, 1] (fractions of the side)")
    if not (y0 < y1 and x0 < x1):
        raise ValueError(f"{name} = {[y0, x0, y1, x1]} must have y0 < y1 and x0 < x1")
    return y0, x0, y1, x1


def box_keep_mask(box, side: int, mode: str, name: str = "box") -> torch.Tensor:
    """VAR's `get_edit_mask` on the last scale's side x side grid: 1 = keep the image's token, 0 = generate.

    The box covers rows round(y0 * side) : round(y1 * side) and the same for columns (Python's round, as VAR).
    "outpaint" keeps the box and generates around it; "inpaint" generates the box. A box that covers no token of
    the grid is an error (the edit would silently be no edit, or all generated)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    y0, x0, y1, x1 = check_box(box, name)
    rows, cols = slice(round(y0 * side), round(y1 * side)), slice(round(x0 * side), round(x1 * side))
    box_HH = torch.zeros(side, side)
    box_HH[rows, cols] = 1.0
    if not box_HH.any():
        raise ValueError(f"{name} = {[y0, x0, y1, x1]} covers no token of the {side}x{side} grid of the last scale "
                         f"(rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}): make it larger")
    return 1.0 - box_HH if mode == "inpaint" else box_HH


def scale_keep(keep_HH: torch.Tensor, p: int) -> torch.Tensor:
    """Where scale p x p keeps the image's codes, (p, p) bool: the mask resized bilinearly, > 0.5; all of it when
    p * p <= 3."""
    if p * p <= ALWAYS_KEPT_TOKENS:
        return torch.ones(p, p, dtype=torch.bool, device=keep_HH.device)
    resized = F.interpolate(keep_HH[None, None].float(), size=(p, p), mode="bilinear", align_corners=False)
    return resized[0, 0] > 0.5


@dataclass
class Edit:
    """What a `ScaleSampler` needs to edit an image: its ids per scale and where to keep them.

    Args:
        ids (list[Tensor]): the image's token ids per scale, [(1 or B, p_k^2)] (the tokenizer's `img_to_ids`).
        keep_HH (Tensor): (H, H) on the last scale's grid, 1 = keep the image's token, 0 = generate
            (`box_keep_mask` builds VAR's box masks).
    """

    ids: list[torch.Tensor]
    keep_HH: torch.Tensor

    def __post_init__(self):
        if not self.ids or not all(torch.is_tensor(t) and t.dim() == 2 and not t.is_floating_point()
                                   for t in self.ids):
            raise ValueError("ids must be a non-empty list of (1 or B, p_k^2) integer tensors, one per scale")
        side = math.isqrt(self.ids[-1].shape[1])
        if self.keep_HH.dim() != 2 or self.keep_HH.shape != (side, side):
            raise ValueError(f"keep mask must be (H, H) = the last scale's grid {(side, side)}, "
                             f"got {tuple(self.keep_HH.shape)}")
        if self.keep_HH.is_floating_point() and not bool(((self.keep_HH >= 0) & (self.keep_HH <= 1)).all()):
            raise ValueError("keep mask values must lie in [0, 1] (1 = keep the image's token)")

    def keep(self, k: int) -> torch.Tensor:
        """Where scale k keeps the image's codes, (p_k, p_k) bool."""
        return scale_keep(self.keep_HH, math.isqrt(self.ids[k].shape[1]))

    def blend(self, k: int, ids_Bl: torch.Tensor, h_BCvpp: torch.Tensor, tokenizer) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
        """Scale k's sampled ids and code map with the image's own where the edit keeps them: (ids, h)."""
        B, p, K = ids_Bl.shape[0], h_BCvpp.shape[-1], len(tokenizer.patch_nums)
        if len(self.ids) != K or tuple(self.ids[k].shape[1:]) != (p * p,) or self.ids[k].shape[0] not in (1, B):
            raise ValueError(f"the edited image's ids must be {K} scales of (1 or {B}, p_k^2) as the tokenizer's "
                             f"{tuple(tokenizer.patch_nums)}, got {[tuple(t.shape) for t in self.ids]} "
                             "(tokenize the image with the model's tokenizer)")
        image_Bl = self.ids[k].to(ids_Bl.device).expand(B, -1)
        keep_pp = self.keep(k).to(h_BCvpp.device)
        h_BCvpp = torch.where(keep_pp, tokenizer.embed_ids(image_Bl, k), h_BCvpp)
        return torch.where(keep_pp.flatten(), image_Bl, ids_Bl), h_BCvpp
