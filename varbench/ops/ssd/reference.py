"""Mamba-2's SSD scan and gated RMSNorm in plain PyTorch: the CPU oracle for `kernel.py`.

Shape legend: B batch, L tokens, T chunk length, c chunks, H heads, P head dim, G groups (B and C are shared by
the H / G heads of a group), N state dim.

Per head h and token t (state S_t of shape (P, N)):
    S_t = exp(dt_t * A_h) * S_(t-1) + dt_t * x_t (outer) B_t,      y_t = S_t C_t + D_h * x_t.
`ssd_recurrent_ref` runs exactly this loop (the oracle of the oracle); `ssd_scan_ref` computes the same function
in chunks (quadratic inside a chunk, recurrent across chunks), as mamba_ssm's Triton kernels do.
Signatures follow `mamba_chunk_scan_combined`, so `kernel.ssd_scan` is a drop-in replacement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.utils.precision import at_least_fp32, no_autocast


def _prepare(x, dt, A, B, C, D, dt_bias, dt_softplus):
    """Upcast, apply dt's bias and softplus, expand B and C from G groups to H heads, D to (H, P)."""
    dtype = at_least_fp32(x.dtype)
    H, P = x.shape[2], x.shape[3]
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    heads_per_group = H // B.shape[2]
    B = B.to(dtype).repeat_interleave(heads_per_group, dim=2)  # (B, L, H, N)
    C = C.to(dtype).repeat_interleave(heads_per_group, dim=2)
    D = None if D is None else D.to(dtype).reshape(H, -1).expand(H, P)  # D per head or per (head, channel)
    return x.to(dtype), dt, A.to(dtype), B, C, D


@no_autocast
def ssd_recurrent_ref(x, dt, A, B, C, D=None, initial_state=None, dt_bias=None, dt_softplus=False):
    """The SSD recurrence, one token at a time.

    Args:
        x (torch.Tensor): inputs of shape (B, L, H, P).
        dt (torch.Tensor): step sizes of shape (B, L, H) (raw when `dt_softplus`).
        A (torch.Tensor): per-head decay rates of shape (H,) (negative).
        B (torch.Tensor): input maps of shape (B, L, G, N).
        C (torch.Tensor): output maps of shape (B, L, G, N).
        D (torch.Tensor, Optional): skip of shape (H,) or (H, P). Default: None.
        initial_state (torch.Tensor, Optional): state of shape (B, H, P, N) before token 0. Default: zeros.
        dt_bias (torch.Tensor, Optional): added to dt, shape (H,). Default: None.
        dt_softplus (bool, Optional): dt <- softplus(dt + dt_bias). Default: False.

    Returns:
        y (B, L, H, P) in x's dtype and the final state (B, H, P, N) in fp32 (fp64 for fp64 inputs).
    """
    dtype_in = x.dtype
    x, dt, A, B, C, D = _prepare(x, dt, A, B, C, D, dt_bias, dt_softplus)
    batch, L, H, P = x.shape
    S = x.new_zeros(batch, H, P, B.shape[-1]) if initial_state is None else initial_state.to(x.dtype).clone()
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (B, H, 1, 1)
        S = decay * S + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, C[:, t]))
    y = torch.stack(ys, dim=1) if L else x.new_zeros(x.shape)
    if D is not None:
        y = y + D * x
    return y.to(dtype_in), S


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[..., t, s] = a[s+1] + ... + a[t] for s <= t, -inf above the diagonal.

    Built by cumulative sums of a masked copy (as mamba_ssm's `segsum`) rather than cumsum[t] - cumsum[s], which
    cancels catastrophically once the cumulative decay is large."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # [..., t, s] = a[t]
    a = a.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1), 0)
    out = a.cumsum(dim=-2)
    return out.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0), float("-inf"))


@no_autocast
def ssd_scan_ref(x, dt, A, B, C, D=None, initial_state=None, chunk_size=256, dt_bias=None, dt_softplus=False):
    """The chunked SSD scan (mamba_ssm's `ssd_minimal_discrete` plus D, dt handling and an initial state).

    Inside a chunk the outputs are a masked quadratic form; across chunks the state is passed recurrently.
    L need not be a multiple of `chunk_size`: the tail is padded with dt = 0 (no decay, no input), which leaves
    the state and the real outputs unchanged.

    Args:
        x, dt, A, B, C, D, initial_state, dt_bias, dt_softplus: as in `ssd_recurrent_ref`.
        chunk_size (int, Optional): chunk length T. Default: 256 (Mamba2's default).

    Returns:
        y (B, L, H, P) in x's dtype and the final state (B, H, P, N) in fp32 (fp64 for fp64 inputs).
    """
    dtype_in = x.dtype
    x, dt, A, B, C, D = _prepare(x, dt, A, B, C, D, dt_bias, dt_softplus)
    batch, L, H, P = x.shape
    N = B.shape[-1]
    T = min(chunk_size, max(L, 1))  # a sequence shorter than a chunk is one chunk (a one-token step pads nothing)
    pad = (-L) % T
    x_, dt_, B_, C_ = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = (L + pad) // T
    x_ = x_.view(batch, c, T, H, P) * dt_.view(batch, c, T, H, 1)  # dt folded into the input: dt_s * x_s
    B_, C_ = B_.view(batch, c, T, H, N), C_.view(batch, c, T, H, N)
    dA = (dt_ * A).view(batch, c, T, H).permute(0, 3, 1, 2)  # (B, H, c, T)
    dA_cs = dA.cumsum(dim=-1)

    # 1. within each chunk: y_t = sum_{s<=t} C_t.B_s exp(sum_{s<r<=t} dA_r) dt_s x_s
    decay_BHcTT = torch.exp(_segsum(dA))
    y = torch.einsum("bcthn,bcshn,bhcts,bcshp->bcthp", C_, B_, decay_BHcTT, x_)

    # 2. each chunk's contribution to the state at its end
    to_end = torch.exp(dA_cs[..., -1:] - dA_cs)  # (B, H, c, T)
    chunk_states = torch.einsum("bcthn,bhct,bcthp->bchpn", B_, to_end, x_)

    # 3. pass states across chunks (c is small: a plain loop)
    S = x.new_zeros(batch, H, P, N) if initial_state is None else initial_state.to(x.dtype)
    states_in = []
    for i in range(c):
        states_in.append(S)
        S = torch.exp(dA_cs[:, :, i, -1])[..., None, None] * S + chunk_states[:, i]
    states_in = torch.stack(states_in, dim=1)  # (B, c, H, P, N): state entering each chunk

    # 4. read the entering state out, decayed to each position
    y = y + torch.einsum("bcthn,bchpn,bhct->bcthp", C_, states_in, torch.exp(dA_cs))
    y = y.reshape(batch, c * T, H, P)[:, :L]
    if D is not None:
        y = y + D * x
    return y.to(dtype_in), S


@no_autocast
def gated_rmsnorm_ref(y, weight, z=None, eps=1e-5, group_size=None, norm_before_gate=False):
    """Mamba2's gated RMSNorm (mamba_ssm `rms_norm_ref`, without bias), computed in fp32.

    Args:
        y (torch.Tensor): input of shape (..., E).
        weight (torch.Tensor): scale of shape (E,).
        z (torch.Tensor, Optional): gate of the same shape as y. Default: None (no gate).
        eps (float, Optional): added to the mean square. Default: 1e-5 (Mamba2).
        group_size (int, Optional): normalise groups of this many channels separately. Default: E (one group).
        norm_before_gate (bool, Optional): RMSNorm(y) * SiLU(z) if True, else RMSNorm(y * SiLU(z)). Default: False
            (Mamba2).

    Returns:
        Tensor of y's shape and dtype.
    """
    dtype_in = y.dtype
    y = y.to(at_least_fp32(y.dtype))
    z = None if z is None else z.to(y.dtype)
    if z is not None and not norm_before_gate:
        y = y * F.silu(z)
    E = y.shape[-1]
    g = y.reshape(*y.shape[:-1], E // (group_size or E), group_size or E)
    g = g * torch.rsqrt(g.square().mean(dim=-1, keepdim=True) + eps)
    out = g.reshape(y.shape) * weight.to(y.dtype)
    if z is not None and norm_before_gate:
        out = out * F.silu(z)
    return out.to(dtype_in)
