"""Time Mamba-2's SSD scan forward + backward through mamba_ssm's kernels and through fla's `chunk_simple_gla`, at
M-VAR-d16's shapes, and append one JSON line per variant to OUT (`ssd_ms`: the forward + backward median).

Issue 18 goal 1: in M-VAR-d16's compiled step (H100, batch 32, session 36) `varbench::ssd_scan_bwd` took 18.4 ms and
`ssd_scan_fwd` 5.7 ms of about 147: mamba_ssm's backward runs about ten kernels. SSD with one group is a scalar-decay
gated linear attention: per head h_t = exp(dt_t A) h_(t-1) + (dt_t x_t) B_t^T and y_t = h_t C_t + D x_t is fla's
simple GLA with q = C, k = B (broadcast over the heads), v = dt x, g = dt A, scale 1 and the state stored v-first
(mamba_ssm's (P, N) layout); its backward runs four kernels. This script says whether that route is worth a backend.

Variants (each timed forward, then forward + backward, on the same inputs):
- `mamba_ssm`: `varbench.ops.ssd.kernel.ssd_scan` (dt softplus, dt bias and D inside the kernels), what M-VAR runs.
- `simple_gla`: the mapping above in eager torch around `fla.ops.simple_gla.chunk_simple_gla`; `kernel_ms`: fla's
  call alone, forward + backward, on q, k, v, g made beforehand (training would leave the mapping's element-wise
  work to Inductor, to fuse with the projections' around it).
Each gradient (x, dt, B, C) and the output are compared with the fp32 reference (`ssd_scan_ref`) on the same inputs:
`max_abs_diff_*` fields. `--tiny` runs small shapes on the CPU with the pure-torch forms (`ssd_scan_ref` and fla's
`naive_chunk_simple_gla`): a check of the mapping and the script, not a measurement.

    python benchmarks/ssd_kernels.py OUT.jsonl [--batch 32] [--chunk 128] [--repeats 20] [--tiny]

`--chunk` is mamba_ssm's chunk length; fla's is its own (64).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.eval.timing import time_ms  # noqa: E402
from varbench.ops.ssd.reference import ssd_scan_ref  # noqa: E402
from varbench.utils.records import record  # noqa: E402


def mamba_ssm_scan(chunk: int, tiny: bool):
    """The SSD scan M-VAR runs: mamba_ssm's kernels (the reference on a CPU)."""
    if tiny:
        return lambda x, dt, A, B, C, D, dt_bias: ssd_scan_ref(x, dt, A, B, C, D, chunk_size=chunk, dt_bias=dt_bias,
                                                               dt_softplus=True)[0]
    from varbench.ops.ssd.kernel import ssd_scan
    return lambda x, dt, A, B, C, D, dt_bias: ssd_scan(x, dt, A, B, C, D, chunk_size=chunk, dt_bias=dt_bias,
                                                       dt_softplus=True)[0]


def simple_gla_scan(_chunk: int, tiny: bool):
    """The same scan as fla's simple GLA: q = C, k = B over every head, v = dt x, g = dt A (log decay), scale 1."""
    if tiny:
        from fla.ops.simple_gla.naive import naive_chunk_simple_gla as gla
    else:
        from fla.ops.simple_gla import chunk_simple_gla as gla

    def scan(x_BLHP, dt_BLH, A_H, B_BLGN, C_BLGN, D_H, dt_bias_H):
        heads = x_BLHP.shape[2]
        dt = F.softplus(dt_BLH.float() + dt_bias_H)
        q_BLHN, k_BLHN = (t.expand(-1, -1, heads, -1) if t.shape[2] == 1 else t for t in (C_BLGN, B_BLGN))
        v_BLHP = (x_BLHP * dt.unsqueeze(-1)).to(x_BLHP.dtype)
        o_BLHP = gla(q_BLHN, k_BLHN, v_BLHP, dt * A_H, scale=1.0)[0]  # fla's own chunk (64)
        return (o_BLHP + x_BLHP * D_H.view(-1, 1)).to(x_BLHP.dtype)
    return scan


def inputs(batch, L, heads, head_dim, state, device, dtype):
    """M-VAR's scan inputs as its mixer makes them (A = -exp(A_log) with A_log in log [1, 16], dt bias of dt in
    [0.001, 0.1]), each needing its gradient."""
    g = torch.Generator(device="cpu").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    dt_init = torch.exp(torch.rand(heads, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                        + torch.log(torch.tensor(1e-3)))
    tensors = {"x": rand(batch, L, heads, head_dim), "dt": rand(batch, L, heads),
               "B": rand(batch, L, 1, state), "C": rand(batch, L, 1, state)}
    tensors = {k: v.to(device, dtype).requires_grad_() for k, v in tensors.items()}
    fixed = {"A": -torch.exp(torch.rand(heads, generator=g) * torch.log(torch.tensor(16.0))).to(device),
             "D": torch.ones(heads, device=device), "dt_bias": (dt_init + torch.log(-torch.expm1(-dt_init))).to(device)}
    return tensors, fixed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    batch, L, heads, head_dim, state, chunk = (2, 40, 3, 8, 4, 16) if args.tiny else (
        args.batch, 680, 32, 64, 64, args.chunk)
    tensors, fixed = inputs(batch, L, heads, head_dim, state, device, dtype)
    w = torch.randn(batch, L, heads, head_dim, device=device, dtype=dtype)
    ref = reference_grads(tensors, fixed, w, chunk)
    for name, make in (("mamba_ssm", mamba_ssm_scan), ("simple_gla", simple_gla_scan)):
        scan = make(chunk, args.tiny)
        run = lambda: scan(*(tensors[k] for k in ("x", "dt")), fixed["A"], tensors["B"], tensors["C"],  # noqa: E731
                           fixed["D"], fixed["dt_bias"])

        def forward_backward():
            for t in tensors.values():
                t.grad = None
            (run().float() * w).sum().backward()

        fwd = time_ms(run, repeats=args.repeats)
        both = time_ms(forward_backward, repeats=args.repeats)
        diffs = {f"max_abs_diff_{k}": (t.grad.float() - ref[k]).abs().max().item() for k, t in tensors.items()}
        diffs["max_abs_diff_y"] = (run().float() - ref["y"]).abs().max().item()
        record(args.out, "ssd_ms", both["median_ms"], "ms", variant=name, batch=batch, L=L, heads=heads,
               head_dim=head_dim, state=state, groups=1, chunk_size=chunk if name == "mamba_ssm" else 64,
               dtype=str(dtype).removeprefix("torch."),
               forward_ms=fwd["median_ms"], backward_ms=both["median_ms"] - fwd["median_ms"], timing=both,
               reference_scale=ref["scale"], config=None, **diffs,
               **({"kernel_ms": gla_kernel_ms(tensors, fixed, args.repeats)} if name == "simple_gla" else {}))
        print(f"{name:10s} fwd {fwd['median_ms']:.3f} ms  fwd+bwd {both['median_ms']:.3f} ms  "
              + "  ".join(f"{k.removeprefix('max_abs_diff_')} {v:.1e}" for k, v in diffs.items()))


def gla_kernel_ms(tensors, fixed, repeats) -> float | None:
    """Median ms of fla's `chunk_simple_gla` forward + backward alone, on the mapping's q, k, v, g as leaves
    (None on a CPU, where it cannot run)."""
    if not torch.cuda.is_available():
        return None
    from fla.ops.simple_gla import chunk_simple_gla
    heads = tensors["x"].shape[2]
    with torch.no_grad():
        dt = F.softplus(tensors["dt"].float() + fixed["dt_bias"])
        q, k = (tensors[n].expand(-1, -1, heads, -1).contiguous() for n in ("C", "B"))
        leaves = [q, k, (tensors["x"] * dt.unsqueeze(-1)).to(q.dtype), dt * fixed["A"]]
    leaves = [t.requires_grad_() for t in leaves]
    do = torch.randn_like(leaves[2])

    def forward_backward():
        for t in leaves:
            t.grad = None
        chunk_simple_gla(*leaves, scale=1.0)[0].backward(do)
    return time_ms(forward_backward, repeats=repeats)["median_ms"]


def reference_grads(tensors, fixed, w, chunk) -> dict:
    """y and the gradients of x, dt, B, C by the fp32 reference (`ssd_scan_ref`); `scale`: the largest |y|."""
    leaves = {k: v.detach().float().requires_grad_() for k, v in tensors.items()}
    y = ssd_scan_ref(leaves["x"], leaves["dt"], fixed["A"], leaves["B"], leaves["C"], fixed["D"], chunk_size=chunk,
                     dt_bias=fixed["dt_bias"], dt_softplus=True)[0]
    (y * w.float()).sum().backward()
    return {"y": y.detach(), "scale": y.abs().max().item(), **{k: v.grad for k, v in leaves.items()}}


if __name__ == "__main__":
    main()
