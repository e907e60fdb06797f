"""GPU parity of the fla kernel path of every fla-family mixer (GLA, RetNet, DeltaNet, Gated DeltaNet, linear
attention, HGRN2) against its float64 torch reference path with the same weights: forward output, per-scale chained
step outputs, final recurrent state and conv tails, gradients of the input and of every parameter; plus the fla
layer itself (its state dict loaded into ours) against the same reference.

Run on the GPU machine from the repo root (fla installed there from the wheels in shared/wheels):
    PYTHONPATH=$PWD python benchmarks/gpu_parity_fla.py --out results/parity_fla.jsonl
fp32 checks run with TF32 off everywhere (cuBLAS, cuDNN and Triton's dots, TRITON_F32_DEFAULT=ieee). fla's
`chunk_delta_rule` refuses fp32 inputs, so DeltaNet's chunk kernel is checked only in bf16 (under autocast, against
the float64 reference, relative RMS); its fp32 rows use `mode=fused_recurrent`. bf16 checks run under autocast with
fp32 weights, as training and sampling do. Errors are relative RMS against the float64 reference; `ref_same` is the
torch reference path's own error in the same precision (fp32, or bf16 autocast), the scale a correct kernel should
land near. Patch sizes: VAR-256 (L = 680).
Shape legend: B batch, L tokens of all scales, C width.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # read when Triton compiles, so set before fla loads it

import argparse
import copy
import importlib
import sys
import time

import torch

from varbench.layout import ScaleLayout
from varbench.mixers.base import run_steps
from varbench.ops.backend import has_module
from varbench.utils.autotune import apply_autotune_mode
from varbench.utils.compare import rel_rms
from varbench.utils.records import record

TOL = {"fp32": 1e-4, "bf16": 3e-2}  # relative RMS; fp32 kernels land near 1e-6, bf16 has 8 mantissa bits
VAR256 = ScaleLayout.for_resolution(256)

# name -> (module, class, variants [(kernel label, constructor overrides, dtypes)], fla layer (class, kwargs))
MIXERS = {
    "gla": ("gla", "GLAMixer", [("chunk", {}, ("fp32", "bf16"))], ("GatedLinearAttention", {})),
    "retnet": ("retnet", "RetNetMixer", [("chunk", {}, ("fp32", "bf16"))], ("MultiScaleRetention", {})),
    "deltanet": ("deltanet", "DeltaNetMixer",
                 [("chunk", {"mode": "chunk"}, ("bf16",)),
                  ("fused_recurrent", {"mode": "fused_recurrent"}, ("fp32", "bf16"))],
                 ("DeltaNet", {"mode": "fused_recurrent"})),
    "gated_deltanet": ("gated_deltanet", "GatedDeltaNetMixer",
                       [("chunk", {}, ("fp32", "bf16")), ("fused_recurrent", {"mode": "fused_recurrent"}, ("fp32",))],
                       ("GatedDeltaNet", {"head_dim": None, "num_heads": 6})),
    "linear_attention": ("linear_attention", "LinearAttentionMixer", [("chunk", {}, ("fp32", "bf16"))],
                         ("LinearAttention", {})),
    "hgrn2": ("hgrn2", "HGRN2Mixer", [("chunk", {}, ("fp32", "bf16"))], ("HGRN2Attention", {})),
}


def row(check: str, dtype: str, out, ref, ref_same=None) -> dict:
    """One check: `out` against the float64 `ref`; `ref_same` is the torch reference path run in `dtype`.

    Passes under the tolerance of its dtype, or within 2x of the reference path's own error in that dtype: an output
    RMSNorm makes a gradient ill-conditioned where the recurrence output is near zero (GLA's first token: o =
    (q.k) v / sqrt(K) with q.k ~ 0), and in bf16 that one row can dominate the relative RMS of a whole gradient
    (the torch reference itself under bf16 autocast, GLA input gradient: 1.7 over all tokens, 3e-2 without token 0)."""
    err = rel_rms(out, ref)
    same = None if ref_same is None else rel_rms(ref_same, ref)
    ok = err <= TOL[dtype] or (same is not None and err <= 2 * same)
    return {"check": check, "dtype": dtype, "rel_rms": err, "max_abs": (out.double() - ref.double()).abs().max().item(),
            "ref_max_abs": ref.abs().max().item(), "ref_same_rel_rms": same, "tol": TOL[dtype], "ok": bool(ok)}


def forward_backward(mixer, x_BLC, dy_BLC, layout, autocast: bool):
    """Output, input gradient and parameter gradients of one forward/backward."""
    mixer.zero_grad(set_to_none=True)
    x_BLC = x_BLC.detach().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y_BLC = mixer(x_BLC, layout)
    (y_BLC.to(dy_BLC.dtype) * dy_BLC).sum().backward()
    return y_BLC.detach(), x_BLC.grad, {n: p.grad for n, p in mixer.named_parameters()}


def worst_param_row(tag, dtype, grads, grads64, grads_same) -> dict:
    name = max(grads64, key=lambda n: rel_rms(grads[n], grads64[n]))
    return row(f"{tag} grad params (worst: {name})", dtype, grads[name], grads64[name], grads_same[name])


def check_mixer(name: str, dev, layout, dim: int, batch: int) -> list[dict]:
    module, cls_name, variants, _ = MIXERS[name]
    cls = getattr(importlib.import_module(f"varbench.mixers.{module}"), cls_name)
    torch.manual_seed(3)
    ref = cls(dim, num_heads=4, backend="reference").to(dev)
    with torch.no_grad():  # away from the init (unit norm weights, ...) so every term is exercised
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref64 = copy.deepcopy(ref).double()
    x, dy = torch.randn(batch, layout.L, dim, device=dev), torch.randn(batch, layout.L, dim, device=dev)
    y64, gx64, gp64 = forward_backward(ref64, x.double(), dy.double(), layout, autocast=False)
    # the reference path's own error in each precision: what a correct kernel should land near
    same = {"fp32": forward_backward(ref, x, dy, layout, autocast=False),
            "bf16": forward_backward(ref, x, dy, layout, autocast=True)}
    with torch.no_grad():
        ys64, state64 = run_steps(ref64, x.double(), layout, dtype=torch.float64)
    print(f"# {name}: float64/fp32/bf16 reference done", file=sys.stderr, flush=True)
    rows = []
    for kernel, overrides, dtypes in variants:
        kern = cls(dim, num_heads=4, backend="fla", **overrides).to(dev)
        kern.load_state_dict(ref.state_dict())
        assert kern.backend == "fla"
        for dtype in dtypes:
            tag, autocast = f"{name} [{kernel}]", dtype == "bf16"
            y, gx, gp = forward_backward(kern, x, dy, layout, autocast)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                ys, state = run_steps(kern, x, layout, dtype=torch.bfloat16 if autocast else torch.float32)
            y_same, gx_same, gp_same = same[dtype]
            rows += [row(f"{tag} forward", dtype, y, y64, y_same), row(f"{tag} chained step", dtype, ys, y64),
                     row(f"{tag} grad x", dtype, gx, gx64, gx_same), worst_param_row(tag, dtype, gp, gp64, gp_same)]
            rows += [row(f"{tag} final state {key}", dtype, state[key], state64[key]) for key in state64]
            print(f"# {tag} {dtype} done", file=sys.stderr, flush=True)
    return rows


def check_fla_layer(name: str, dev, layout, dim: int, batch: int) -> list[dict]:
    """fla's own layer, its state dict loaded strictly into our reference mixer: same function?"""
    import fla.layers

    module, cls_name, _, (layer_name, layer_kwargs) = MIXERS[name]
    cls = getattr(importlib.import_module(f"varbench.mixers.{module}"), cls_name)
    torch.manual_seed(4)
    ours = cls(dim, num_heads=4, backend="reference")
    if "head_dim" in layer_kwargs:  # GatedDeltaNet: fla wants the head dim ours derived from the width
        layer_kwargs = {**layer_kwargs, "head_dim": ours.head_k_dim}
    layer = getattr(fla.layers, layer_name)(hidden_size=dim, **layer_kwargs).to(dev)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours.load_state_dict(layer.state_dict(), strict=True)
    ours64 = ours.to(dev).double()
    x = torch.randn(batch, layout.L, dim, device=dev)
    with torch.no_grad():
        y64 = ours64(x.double(), layout)
        y_layer = layer(x)[0]
    return [row(f"{name} fla.layers.{layer_name} forward (same weights)", "fp32", y_layer, y64)]


def print_row(r: dict) -> None:
    same = "" if r["ref_same_rel_rms"] is None else f"{r['ref_same_rel_rms']:.2e}"
    print(f"{r['check']:72s} {r['dtype']:5s} {r['rel_rms']:9.2e} {r['max_abs']:9.2e} {same:>9s} {r['tol']:7.0e}"
          f"  {'yes' if r['ok'] else 'NO'}", flush=True)


def settings() -> dict:
    """What the numbers depend on besides the versions every record carries."""
    return {"TRITON_F32_DEFAULT": os.environ.get("TRITON_F32_DEFAULT"), "tf32": torch.backends.cuda.matmul.allow_tf32}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file to append one row per check to")
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--first-config", action="store_true",
                        help="skip Triton autotuning: take each kernel's first config (fast on a cold machine)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_parity_fla: no CUDA device; run this on the GPU machine (see shared/GPU.md)")
    if not has_module("fla"):
        sys.exit("gpu_parity_fla: fla is not importable; install the wheels: python3 -m pip install --no-index "
                 "--no-deps --target /tmp/site .whl/*.whl and add /tmp/site to PYTHONPATH")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.first_config:
        apply_autotune_mode("first")
    setup = {"dim": args.dim, "batch": args.batch, "patch_nums": list(VAR256.patch_nums), **settings()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    print(f"{'check':72s} {'dtype':5s} {'rel_rms':>9s} {'max_abs':>9s} {'ref_same':>9s} {'tol':>7s}  ok")
    ok, start = True, time.time()
    for name in args.mixers:
        for check in (check_mixer, check_fla_layer):
            try:
                rows = check(name, "cuda", VAR256, args.dim, args.batch)
            except Exception as e:  # noqa: BLE001  fla refusing this GPU / Triton is a result: record it, go on
                rows = [{"check": f"{name} {check.__name__} raised", "dtype": "all", "rel_rms": float("nan"),
                         "max_abs": float("nan"), "ref_same_rel_rms": None, "tol": TOL["fp32"], "ok": False,
                         "error": f"{type(e).__name__}: {e}"}]
            for r in rows:
                record(args.out, "parity_check_rel_rms", r["rel_rms"], "ratio",
                       **{k: v for k, v in r.items() if k != "rel_rms"}, **setup)
                print_row(r)
                ok &= r["ok"]
            print(f"# {name} {check.__name__} done at {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    print(setup)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
