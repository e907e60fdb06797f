"""ScaleLayout: the one source of truth for how scales are laid out in a sequence.

All scales are concatenated coarse to fine, raster (row-major) order inside a scale.
Shape legend: L tokens of all scales, l tokens of one scale, K number of scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

# The published schedules (var_mvar_facts.md 1.1). Keys are the image side in pixels at 16x downsampling.
PATCH_NUMS = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}


@dataclass(frozen=True)
class ScaleLayout:
    """Token layout of a scale-wise sequence built from `patch_nums` (the side of each scale's square map).

    Args:
        patch_nums (tuple[int, ...]): strictly increasing sides, e.g. VAR-256 (1, 2, ..., 16).
        latent_side (int, Optional): side of the tokenizer latent; the last scale must equal it.
            Default: the last entry of `patch_nums`.
    """

    patch_nums: tuple[int, ...]
    latent_side: int | None = None

    def __post_init__(self):
        pn = tuple(int(p) for p in self.patch_nums)
        object.__setattr__(self, "patch_nums", pn)
        if not pn:
            raise ValueError("patch_nums is empty: give at least one scale side, e.g. (1, 2, 3, 4)")
        if any(p < 1 for p in pn) or any(b <= a for a, b in zip(pn, pn[1:])):
            raise ValueError(f"patch_nums must be positive and strictly increasing, got {pn}")
        if self.latent_side is not None and pn[-1] != self.latent_side:
            raise ValueError(f"the last scale ({pn[-1]}) must equal the latent side ({self.latent_side}); got {pn}")

    @classmethod
    def for_resolution(cls, image_size: int) -> "ScaleLayout":
        """The published schedule for a 256, 512 or 1024 px image."""
        if image_size not in PATCH_NUMS:
            raise ValueError(f"no published schedule for {image_size} px; known: {sorted(PATCH_NUMS)}")
        return cls(PATCH_NUMS[image_size])

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @cached_property
    def lengths(self) -> tuple[int, ...]:
        """Tokens per scale (p_k squared)."""
        return tuple(p * p for p in self.patch_nums)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each scale in the sequence, plus the total length at the end (K + 1 entries)."""
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return tuple(out)

    @property
    def L(self) -> int:
        """Total number of tokens."""
        return self.offsets[-1]

    def slice(self, k: int) -> slice:
        """Positions of scale k in the sequence."""
        return slice(self.offsets[k], self.offsets[k + 1])

    def scale_ids(self, device=None) -> torch.Tensor:
        """(L,) int64 scale index of every token (VAR's `lvl_1L`)."""
        # built on the CPU explicitly (also under a meta-device context), then moved; from a Python list, since
        # repeat_interleave with tensor repeats has a data-dependent shape: a graph break under torch.compile
        ids = torch.tensor([k for k, n in enumerate(self.lengths) for _ in range(n)], dtype=torch.int64, device="cpu")
        return ids if device is None else ids.to(device)

    def cu_seqlens(self, batch: int = 1, device=None) -> torch.Tensor:
        """int32 segment boundaries of every scale of every sample (flash varlen layout), (batch*K + 1,)."""
        lens = torch.tensor(self.lengths * batch, device="cpu")
        cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        return cu if device is None else cu.to(device)

    def block_causal_mask(self, device=None) -> torch.Tensor:
        """(L, L) bool, True where query i may see key j: scale(j) <= scale(i) (VAR)."""
        ids = self.scale_ids(device)
        return ids[:, None] >= ids[None, :]

    def block_diag_mask(self, device=None) -> torch.Tensor:
        """(L, L) bool, True where query i and key j are in the same scale (M-VAR intra-scale attention)."""
        ids = self.scale_ids(device)
        return ids[:, None] == ids[None, :]

    def positions_in_scale(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L,) row and (L,) column of every token inside its own scale (raster order)."""
        rows, cols = [], []
        for p in self.patch_nums:
            r, c = torch.meshgrid(torch.arange(p, device=device), torch.arange(p, device=device), indexing="ij")
            rows.append(r.flatten())
            cols.append(c.flatten())
        return torch.cat(rows), torch.cat(cols)

    def window_mask(self, window: int, device=None) -> torch.Tensor:
        """(L, L) bool, True where query i and key j are in the same scale and within the 2-D window: |row_i - row_j|
        <= window and |col_i - col_j| <= window (intra=local)."""
        row, col = self.positions_in_scale(device)
        near = ((row[:, None] - row[None, :]).abs() <= window) & ((col[:, None] - col[None, :]).abs() <= window)
        # one scale (sampling's `step`) is a single block: skip the scale ids, which are built on the CPU and copied,
        # a blocking copy that a CUDA graph cannot capture
        return near if self.num_scales == 1 else near & self.block_diag_mask(device)

    def segments(self) -> list[slice]:
        """One slice per scale: the block-diagonal segments."""
        return [self.slice(k) for k in range(self.num_scales)]

    def split(self, x_BLC: torch.Tensor) -> list[torch.Tensor]:
        """Split a full sequence into per-scale pieces along dim 1."""
        return list(torch.split(x_BLC, self.lengths, dim=1))



@dataclass(frozen=True)
class RasterLayout:
    """Token layout of a raster-order (next-token) sequence: every token is its own "scale".

    It has ScaleLayout's interface, so every mixer runs on it unchanged: `forward` over the whole sequence and
    `step(x, state, layout, k)` over scale k = one token. Its scale ids are the token positions, so VAR's
    block-causal mask is the ordinary causal mask.

    Args:
        num_tokens (int): sequence length L (AiM: the class token plus 255 image tokens at the input).
    """

    num_tokens: int

    def __post_init__(self):
        if int(self.num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")

    @property
    def patch_nums(self) -> tuple[int, ...]:
        # what needs scale sides (the prefix re-run sampler, a multi-scale tokenizer) has no raster form
        raise ValueError("a RasterLayout has no patch_nums: this path (the prefix re-run sampler, a multi-scale "
                         "tokenizer) supports scale layouts only")

    @property
    def num_scales(self) -> int:
        return self.num_tokens

    @cached_property
    def lengths(self) -> tuple[int, ...]:
        return (1,) * self.num_tokens

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        return tuple(range(self.num_tokens + 1))

    @property
    def L(self) -> int:
        return self.num_tokens

    def slice(self, k: int) -> slice:
        return slice(k, k + 1)

    def scale_ids(self, device=None) -> torch.Tensor:
        """(L,) int64: the position of every token."""
        return torch.arange(self.num_tokens, device=device)

    def cu_seqlens(self, batch: int = 1, device=None) -> torch.Tensor:
        return torch.arange(batch * self.num_tokens + 1, dtype=torch.int32, device=device)

    def block_causal_mask(self, device=None) -> torch.Tensor:
        """(L, L) bool causal mask: query i sees keys j <= i."""
        ids = self.scale_ids(device)
        return ids[:, None] >= ids[None, :]

    def block_diag_mask(self, device=None) -> torch.Tensor:
        return torch.eye(self.num_tokens, dtype=torch.bool, device=device)

    def segments(self) -> list[slice]:
        return [self.slice(k) for k in range(self.num_tokens)]

    def split(self, x_BLC: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(x_BLC, 1, dim=1))


# what a module with a scale structure reads: in raster order every token is its own scale (block-causal is causal)
Layout = ScaleLayout | RasterLayout
