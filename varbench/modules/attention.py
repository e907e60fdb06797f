"""VAR's attention projections, shared by the block-causal inter-scale mixer (varbench/mixers/attention.py) and the
intra-scale variants (varbench/intra/).

Shape legend: B batch, L tokens, H heads, d head dim, C width.
Parameter names follow VAR (`mat_qkv`, `q_bias`, `zero_k_bias`, `v_bias`, `scale_mul_1H11`, `proj`), so official
checkpoints load by renaming the module only (see `varbench.backbones.convert`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from varbench.modules.fused import NORMALIZE_EPS, L2QKTraining, fused, l2_qk, runs_fused

MAX_SCALE_MUL = math.log(100.0)  # VAR clamps the learned log-temperature at ln 100
QK_NORMS = ("auto", "triton", "torch")


class ScaleAttention(nn.Module):
    """VAR's attention projections: qkv with q and v biases and a fixed zero k bias, optional L2-normalised
    q/k with a learned per-head temperature, output projection.

    Args:
        dim (int): model width C.
        num_heads (int): heads H (head dim C / H).
        l2_norm (bool, Optional): VAR's `attn_l2_norm`: normalise q and k, multiply q by exp(min(scale_mul, ln 100)),
            softmax scale 1. Without it the softmax scale is 0.25 / sqrt(d) (a quarter of the usual). Default: True.
        qk_norm (str, Optional): the kernels of that normalisation under autograd (training): "triton" (one
            Triton kernel forward and one backward, `varbench.ops.qk_norm.kernel`; CUDA), "torch" (the torch form,
            `varbench.modules.fused.l2_qk` with its written backward), "auto" (triton on CUDA, else torch). The
            same arithmetic; without autograd (sampling) the torch form runs, but for fused sampling
            (`fused_elementwise`), which runs these kernels' forward where they would run in training. Default: "auto".
    """

    rescale_out_proj = True  # VAR's init divides `proj` by sqrt(2*depth); M-VAR keeps it for its intra-scale branch
    linear_first = True  # forward and step take their input to `mat_qkv` first (`AdaLNBlock.modulate`)

    def __init__(self, dim: int, num_heads: int, l2_norm: bool = True, qk_norm: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        if qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm={qk_norm!r}: valid values are {', '.join(QK_NORMS)}")
        self.qk_norm = qk_norm
        self.num_heads, self.head_dim, self.l2_norm = num_heads, dim // num_heads, l2_norm
        self.fused_elementwise = False  # fused q/k normalisation (ScaleAR.set_fused_elementwise)
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim), persistent=False)
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.scale = 1.0 if l2_norm else 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def output_projection(self) -> nn.Linear:
        """The output projection that VAR's init rescales (`rescale_out_proj`)."""
        return self.proj

    def weight_terms(self) -> dict[str, torch.Tensor]:
        """What `qkv` derives from the weights alone: the joined bias [q_bias, 0, v_bias] (VAR concatenates it at
        every call) and, with `l2_norm`, the temperature exp(min(scale_mul, ln 100)) (1, H, 1, 1). The inter-scale
        mixer's `step` computes them once per generation and carries them (three kernels fewer per later scale)."""
        terms = {"qkv_bias": torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))}
        if self.l2_norm:
            terms["temperature_1H11"] = self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
        return terms

    def qkv(self, x_BLC: torch.Tensor, terms: dict[str, torch.Tensor] | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project to q, k, v of shape (B, H, L, d), normalised when `l2_norm`; `terms` are `weight_terms()` (computed
        now when None)."""
        B, L, C = x_BLC.shape
        terms = self.weight_terms() if terms is None else terms
        qkv = self.project(x_BLC, terms["qkv_bias"])
        if self.l2_norm and (torch.is_grad_enabled() or runs_fused(self)) and self._triton_norm(qkv):
            # training on a GPU: one kernel each way, v copied out beside q and k; fused sampling on a GPU: the same
            # forward kernel (one pass over qkv, where Inductor's dynamic-shape kernels of `l2_qk` took three: in a
            # batch-64 VAR-d16 generation on an H100, 6.1 ms of GPU time against 32.5, session 33)
            from varbench.ops.qk_norm.kernel import qkv_l2_norm
            return qkv_l2_norm(qkv, terms["temperature_1H11"], self.num_heads, NORMALIZE_EPS)
        if not self.l2_norm:
            return self._heads(qkv)
        qkv_3BHLd = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # normalisation runs in fp32 under autocast; q, k go back to v's dtype for the kernels
        # (with autograd: the backward written out, which keeps no fp32 copy of the normalised rows: less memory)
        l2 = fused(l2_qk) if runs_fused(self) else L2QKTraining.apply if torch.is_grad_enabled() else l2_qk
        q_BHLd, k_BHLd = l2(qkv_3BHLd[:2], terms["temperature_1H11"], qkv.dtype)
        return q_BHLd, k_BHLd, qkv_3BHLd[2]

    def qkv_parts(self, x_BLC: torch.Tensor, sizes: tuple[int, ...]) -> list[tuple[torch.Tensor, ...]]:
        """`qkv` cut along the tokens into consecutive parts of `sizes` tokens: one (q, k, v) triple of (B, H, l, d)
        per part. Without `l2_norm` the projection's output is cut before its heads are split out, so that the
        backward concatenates the parts' gradients in its own (B, L, 3C) layout (see `sdpa_scales_block_diag`)."""
        if self.l2_norm:
            return list(zip(*(t.split(sizes, dim=2) for t in self.qkv(x_BLC))))
        qkv = self.project(x_BLC, self.weight_terms()["qkv_bias"])
        return [self._heads(part) for part in qkv.split(sizes, dim=1)]

    def _heads(self, qkv_BL3C: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The projection's output as views q, k, v of (B, H, L, d)."""
        B, L, _ = qkv_BL3C.shape
        return qkv_BL3C.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def project(self, x_BLC: torch.Tensor, qkv_bias: torch.Tensor) -> torch.Tensor:
        """The qkv projection's output (B, L, 3 C) with the joined bias (`weight_terms`)."""
        if type(self.mat_qkv) is nn.Linear:  # VAR's call: the bias joins the matmul
            return nn.functional.linear(x_BLC, self.mat_qkv.weight, qkv_bias)
        return self.mat_qkv(x_BLC) + qkv_bias  # a linear with a forward of its own (FP8 training, training/fp8.py)

    def qkv_into(self, x_BLC: torch.Tensor, terms: dict[str, torch.Tensor], k_out_BHLd: torch.Tensor,
                 v_out_BHLd: torch.Tensor) -> torch.Tensor:
        """`qkv` writing k and v into `k_out_BHLd` and `v_out_BHLd` (views, e.g. a KV cache's slice of one scale), and
        returning q. Fused sampling on a GPU stores them there from the normalisation kernel
        (`varbench.ops.qk_norm.kernel.qkv_l2_norm_into`, no copy); otherwise they are copied in."""
        if self.l2_norm and runs_fused(self) and self._triton_norm(x_BLC):
            from varbench.ops.qk_norm.kernel import qkv_l2_norm_into
            return qkv_l2_norm_into(self.project(x_BLC, terms["qkv_bias"]), terms["temperature_1H11"],
                                    self.num_heads, NORMALIZE_EPS, k_out_BHLd, v_out_BHLd)
        q_BHLd, k_BHLd, v_BHLd = self.qkv(x_BLC, terms)
        k_out_BHLd.copy_(k_BHLd)
        v_out_BHLd.copy_(v_BHLd)
        return q_BHLd

    def _triton_norm(self, qkv: torch.Tensor) -> bool:
        """Whether the normalisation runs the Triton kernels on `qkv` (see `qk_norm`)."""
        if self.qk_norm == "triton" and not qkv.is_cuda:
            raise ValueError(f"qk_norm=triton runs on CUDA tensors; got {qkv.device.type} ones (use auto or torch)")
        return self.qk_norm == "triton" or (self.qk_norm == "auto" and qkv.is_cuda)

    def out(self, o_BHLd: torch.Tensor) -> torch.Tensor:
        """Concatenate heads and project: (B, H, L, d) -> (B, L, C)."""
        B, H, L, d = o_BHLd.shape
        return self.proj(o_BHLd.transpose(1, 2).reshape(B, L, H * d))

    def qkv_flops(self, tokens: int) -> int:
        C = self.proj.in_features
        return 2 * tokens * C * 3 * C + 2 * tokens * C * C  # qkv and output projections

    @staticmethod
    def score_flops(pairs: int, head_dim: int, num_heads: int) -> int:
        return 2 * 2 * pairs * head_dim * num_heads  # q.k and p.v, per allowed (query, key) pair
