"""Kernel vs reference parity on a GPU, for every registered inter-scale mixer and intra-scale variant.

For each registry entry the reference path (plain PyTorch, fp32, TF32 off) and the kernel path chosen by
`backend: auto` get the same weights and inputs (VAR-256 layout); compared: the whole-sequence forward, the
chained per-scale `step` (carried state) and its final state, and the gradients of the input and of every
parameter. fp32 with TF32 off is the parity check; bf16 is reported as relative RMS error (what users run).
One JSON line per comparison goes to --out.   Usage: PYTHONPATH=$PWD python benchmarks/gpu_parity.py --out FILE
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # Triton's default TF32 dots are only ~1e-3 accurate

import torch

from varbench.layout import PATCH_NUMS, ScaleLayout
from varbench.mixers.base import run_steps
from varbench.registry import build, list_options
from varbench.utils.autotune import apply_autotune_mode
from varbench.utils.compare import rel_rms
from varbench.utils.records import record


def errors(ref: torch.Tensor, out: torch.Tensor) -> dict:
    return {"max_abs": (out.double() - ref.double()).abs().max().item(), "rel_rms": rel_rms(out, ref)}


def run_paths(module, x_BLC, layout, is_mixer):
    """Forward output, chained-step output, final state, and gradients (input, parameters)."""
    x_BLC = x_BLC.detach().requires_grad_(True)
    y_BLC = module(x_BLC, layout)
    y_BLC.float().square().mean().backward()
    grads = {"x": x_BLC.grad.detach()} | {n: p.grad.detach() for n, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    with torch.no_grad():
        if is_mixer:
            y_steps, state = run_steps(module, x_BLC.detach(), layout)
        else:  # intra-scale attention: each scale alone, no state
            y_steps, state = torch.cat([module.step(x_BlC, layout, k)
                                        for k, x_BlC in enumerate(layout.split(x_BLC.detach()))], 1), {}
    return y_BLC.detach(), y_steps, state, grads


def compare(group: str, name: str, layout: ScaleLayout, dim: int, heads: int, batch: int, out_path: str) -> None:
    ref = build(group, name, dim=dim, num_heads=heads, backend="reference").cuda()
    kernel = build(group, name, dim=dim, num_heads=heads).cuda()
    ran = kernel.backend_on("cuda")  # what `auto` runs on CUDA tensors
    fields = dict(group=group, name=name, backend=ran, dim=dim, batch=batch, L=layout.L)
    if ran == "reference":
        record(out_path, "parity_skipped", 0, "", reason="no kernel available for this entry", **fields)
        print(f"{group}/{name}: no kernel path here")
        return
    kernel.load_state_dict(ref.state_dict())
    x = torch.randn(batch, layout.L, dim, device="cuda")
    want = run_paths(ref, x, layout, group == "mixer")
    for dtype in (torch.float32, torch.bfloat16):
        try:
            got = run_paths(kernel.to(dtype), x.to(dtype), layout, group == "mixer")
        except Exception as err:  # noqa: BLE001  a kernel refusing a dtype (or this GPU) is a result to record
            record(out_path, "parity_error", 0, "", dtype=str(dtype), error=str(err)[:300], **fields)
            print(f"{group}/{name} {dtype}: kernel refused: {str(err)[:120]}")
            continue
        rows = {"forward": errors(want[0], got[0]), "step_chain": errors(want[1], got[1]),
                "step_vs_forward_kernel": errors(got[0], got[1])}
        rows |= {f"state.{k}": errors(v, got[2][k]) for k, v in want[2].items() if k in got[2]}
        rows |= {f"grad.{k}": errors(v, got[3][k]) for k, v in want[3].items()}
        for what, err in rows.items():
            record(out_path, "parity_rel_rms", err["rel_rms"], "ratio", max_abs=err["max_abs"], dtype=str(dtype),
                   compared=what, **fields)
        worst = max(rows.items(), key=lambda kv: kv[1]["rel_rms"])
        print(f"{group}/{name:18s} {ran:10s} {dtype!s:15s} forward {rows['forward']['rel_rms']:.2e} "
              f"step {rows['step_chain']['rel_rms']:.2e}  worst {worst[0]} {worst[1]['rel_rms']:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="registry names to check (default: every mixer and intra variant)")
    parser.add_argument("--first-config", action="store_true",
                        help="skip Triton autotuning: take each kernel's first config (fast on a cold machine)")
    args = parser.parse_args()
    apply_autotune_mode("first" if args.first_config else None)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_parity.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    layout = ScaleLayout(PATCH_NUMS[256])
    for group in ("mixer", "intra"):
        for name in list_options(group):
            if name == "none" or (args.only and name not in args.only):  # none: no branch, nothing to compare
                continue
            print(f"# {group}/{name} ...", flush=True)
            try:
                compare(group, name, layout, args.dim, args.dim // 64, args.batch, args.out)
            except Exception as err:  # noqa: BLE001  a kernel library refusing this GPU is a result: record, go on
                record(args.out, "parity_error", 0, "", group=group, name=name, dtype="all",
                       error=f"{type(err).__name__}: {str(err)[:300]}")
                print(f"{group}/{name}: raised {type(err).__name__}: {str(err)[:200]}", flush=True)


if __name__ == "__main__":
    main()
