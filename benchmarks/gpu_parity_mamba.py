"""GPU parity of the Mamba kernel paths against the float64 torch references: SSD scan, causal conv, selective scan
(with the closed-form carried state) and both mixers (forward, per-scale chained step, final state, fused forward).

Run on the GPU machine from the repo root:
    PYTHONPATH=$PWD python benchmarks/gpu_parity_mamba.py --out results/parity_mamba.jsonl
fp32 checks run with TF32 off everywhere (cuBLAS, cuDNN and Triton's dots, TRITON_F32_DEFAULT=ieee), because Triton's
default TF32 dots alone put the Mamba2 kernel 7e-4..3e-3 off (golden/setA README). bf16 checks run under autocast with
fp32 weights, as training and sampling do. Errors are relative RMS against the float64 reference; `ref32` is the fp32
torch reference's own error, the scale a correct kernel should land near.
Shape legend: B batch, L tokens, H heads, P head dim, N state dim, E channels, W conv width.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # read when Triton compiles, so set before mamba_ssm loads it

import argparse
import copy
import functools
import sys
import traceback

import torch

from varbench.layout import ScaleLayout
from varbench.mixers.base import run_steps
from varbench.mixers.mamba import MambaMixer
from varbench.mixers.mamba2 import Mamba2Mixer
from varbench.ops.backend import has_module
from varbench.ops.causal_conv import kernel as conv_kernel
from varbench.ops.causal_conv.reference import causal_conv1d_ref
from varbench.ops.selective_scan import kernel as scan_kernel
from varbench.ops.selective_scan.reference import selective_scan_ref
from varbench.ops.ssd import kernel as ssd_kernel
from varbench.ops.ssd.reference import ssd_scan_ref
from varbench.utils.autotune import apply_autotune_mode
from varbench.utils.compare import rel_rms
from varbench.utils.records import record

TOL = {"fp32": 2e-5, "bf16": 3e-2}  # relative RMS; fp32 measured ~1e-6 on the golden data, bf16 has 8 mantissa bits
VAR256 = ScaleLayout.for_resolution(256)  # L = 680
VAR512 = ScaleLayout.for_resolution(512)  # L = 2240: several 256-token SSD chunks, a carried state inside a scale


def row(check: str, dtype: str, out, ref, ref32=None) -> dict:
    err = rel_rms(out, ref)
    return {"check": check, "dtype": dtype, "rel_rms": err, "max_abs": (out.double() - ref.double()).abs().max().item(),
            "ref_max_abs": ref.abs().max().item(), "ref32_rel_rms": None if ref32 is None else rel_rms(ref32, ref),
            "tol": TOL[dtype], "ok": bool(err <= TOL[dtype])}


def f64(d: dict) -> dict:
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in d.items()}


def cut(d: dict, sl: slice, seq_keys: tuple[str, ...], dim: int) -> dict:
    return {k: v.narrow(dim, sl.start, sl.stop - sl.start) if k in seq_keys else v for k, v in d.items()}


def check_ssd(dev) -> list[dict]:
    rows, g = [], torch.Generator(device=dev).manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, device=dev, generator=g)

    for layout, chunk in ((VAR256, 256), (VAR512, 256), (VAR256, 64)):
        L, H, P, N = layout.L, 8, 64, 64
        inp = {"x": r(2, L, H, P), "dt": r(2, L, H) - 1, "A": -torch.linspace(1, 16, H, device=dev),
               "B": r(2, L, 1, N), "C": r(2, L, 1, N), "D": r(H), "dt_bias": r(H), "dt_softplus": True}
        h0 = r(2, H, P, N)
        name = f"ssd L={L} chunk={chunk}"
        y64, s64 = ssd_scan_ref(**f64(inp), initial_state=h0.double(), chunk_size=chunk)
        y32, s32 = ssd_scan_ref(**inp, initial_state=h0, chunk_size=chunk)
        y, s = ssd_kernel.ssd_scan(**inp, initial_state=h0, chunk_size=chunk)
        rows += [row(f"{name} y (h0)", "fp32", y, y64, y32), row(f"{name} final state (h0)", "fp32", s, s64, s32)]
        state, ys = None, []  # one call per scale, state carried by the kernel itself
        for sl in layout.segments():
            part = cut(inp, sl, ("x", "dt", "B", "C"), 1)
            y_k, state = ssd_kernel.ssd_scan(**part, initial_state=state, chunk_size=chunk)
            ys.append(y_k)
        y64, s64 = ssd_scan_ref(**f64(inp), chunk_size=chunk)
        rows += [row(f"{name} chained y", "fp32", torch.cat(ys, 1), y64),
                 row(f"{name} chained state", "fp32", state, s64)]
        bf = {k: v.bfloat16() if k in ("x", "dt", "B", "C") else v for k, v in inp.items()}
        rows.append(row(f"{name} y bf16 inputs", "bf16", ssd_kernel.ssd_scan(**bf, chunk_size=chunk)[0], y64))
    return rows


def check_conv(dev) -> list[dict]:
    rows, g = [], torch.Generator(device=dev).manual_seed(1)
    L, D = VAR256.L, 1152  # Mamba2 conv channels at C = 512
    for W in (2, 4):
        x, w, b = (torch.randn(*s, device=dev, generator=g) for s in ((2, L, D), (D, W), (D,)))
        y64, tail64 = causal_conv1d_ref(x.double(), w.double(), b.double(), activation="silu")
        for via in conv_kernel.VIA:
            tail, ys = None, []
            for sl in VAR256.segments():  # scale 0 has 1 token: shorter than the tail
                y_k, tail = conv_kernel.causal_conv1d(x[:, sl], w, b, tail, activation="silu", via=via)
                ys.append(y_k)
            rows.append(row(f"conv W={W} via={via} chained y", "fp32", torch.cat(ys, 1), y64))
            rows.append(row(f"conv W={W} via={via} tail", "fp32", tail, tail64))
        y_bf16, _ = conv_kernel.causal_conv1d(x.bfloat16(), w, b, activation="silu")
        rows.append(row(f"conv W={W} y bf16 input", "bf16", y_bf16, y64))
        rows += conv_final_states_rows(x, w, b, W)
    return rows


def conv_final_states_rows(x, w, b, W) -> list[dict]:
    """Information: does causal_conv1d's own `final_states` equal the torch tail, also for a 1-token piece?
    (The adapter slices the tail in torch and does not depend on it.)"""
    from causal_conv1d import causal_conv1d_fn
    rows = []
    for L in (1, x.shape[1]):
        piece = x[:, :L].contiguous()
        tail = x[:, -(W - 1):].contiguous()  # any earlier context
        _, final = causal_conv1d_fn(piece.transpose(1, 2), w, b, initial_states=tail.transpose(1, 2),
                                    return_final_states=True, activation="silu")
        expected = torch.cat([tail, piece], 1)[:, -(W - 1):]
        rows.append(row(f"conv W={W} kernel final_states L={L} (info)", "fp32", final.transpose(1, 2), expected))
    return rows


def check_selective_scan(dev) -> list[dict]:
    rows, g = [], torch.Generator(device=dev).manual_seed(2)
    E, N, L = 512, 16, VAR256.L

    def r(*shape):
        return torch.randn(*shape, device=dev, generator=g)

    # S4D-real rates scaled per channel, so decays range from slow to fast
    A = -torch.arange(1.0, N + 1, device=dev).repeat(E, 1) * torch.rand(E, 1, device=dev, generator=g)
    inp = {"u": r(2, E, L), "delta": r(2, E, L) - 1, "A": A, "B": r(2, N, L), "C": r(2, N, L), "D": r(E),
           "z": r(2, E, L), "delta_bias": r(E), "delta_softplus": True}
    h0 = r(2, E, N)
    y64, s64 = selective_scan_ref(**f64(inp), initial_state=h0.double())
    y32, s32 = selective_scan_ref(**inp, initial_state=h0)
    y, s = scan_kernel.selective_scan(**inp, initial_state=h0)
    rows = [row("selective_scan y (h0, closed form)", "fp32", y, y64, y32),
            row("selective_scan final state (h0, closed form)", "fp32", s, s64, s32)]
    state, ys = None, []
    for sl in VAR256.segments():
        y_k, state = scan_kernel.selective_scan(**cut(inp, sl, ("u", "delta", "B", "C", "z"), 2), initial_state=state)
        ys.append(y_k)
    y64, s64 = selective_scan_ref(**f64(inp))
    rows += [row("selective_scan chained y", "fp32", torch.cat(ys, -1), y64),
             row("selective_scan chained state", "fp32", state, s64)]
    bf = {k: v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v for k, v in inp.items()}
    rows.append(row("selective_scan y bf16 inputs", "bf16", scan_kernel.selective_scan(**bf)[0], y64))
    return rows


@torch.no_grad()
def check_mixer(name, build, dev, layout) -> list[dict]:
    torch.manual_seed(3)
    ref = build(backend="reference").to(dev)
    for p in ref.parameters():  # away from the init (D = 1, zero conv bias...) so every term is exercised
        p.add_(0.05 * torch.randn_like(p))
    ref64 = copy.deepcopy(ref).double()
    kern = build(backend="mamba_ssm").to(dev)
    kern.load_state_dict(ref.state_dict())
    x = torch.randn(2, layout.L, ref.in_proj.in_features, device=dev)
    y64, state64 = run_steps(ref64, x.double(), layout, dtype=torch.float64)
    tag = f"{name} L={layout.L}"
    rows = [row(f"{tag} forward", "fp32", kern(x, layout), y64, ref(x, layout))]
    y, state = run_steps(kern, x, layout, dtype=torch.float32)
    rows += [row(f"{tag} chained step", "fp32", y, y64),
             row(f"{tag} final ssm state", "fp32", state["ssm"], state64["ssm"]),
             row(f"{tag} final conv tail", "fp32", state["conv"], state64["conv"])]
    if name == "mamba2":
        fused = build(backend="mamba_ssm", fused=True).to(dev)
        fused.load_state_dict(ref.state_dict())
        rows.append(row(f"{tag} fused forward", "fp32", fused(x, layout), y64))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        rows.append(row(f"{tag} forward autocast", "bf16", kern(x, layout), y64))
        y_steps = run_steps(kern, x, layout, dtype=torch.bfloat16)[0]
        rows.append(row(f"{tag} chained step autocast", "bf16", y_steps, y64))
    return rows


def settings() -> dict:
    """What the numbers depend on besides the versions every record carries."""
    return {"TRITON_F32_DEFAULT": os.environ.get("TRITON_F32_DEFAULT"), "tf32": torch.backends.cuda.matmul.allow_tf32}


def run_all(out_path: str, env: dict, dev="cuda") -> list[dict]:
    """Every check, each group's rows appended to `out_path` as soon as it ran (a hang or a timeout keeps the rows
    before it); each row has check, dtype, rel_rms, max_abs, ref_max_abs, ref32_rel_rms, tol, ok."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    groups = [("ssd", check_ssd, (dev,)), ("causal_conv", check_conv, (dev,)),
              ("selective_scan", check_selective_scan, (dev,))]
    for layout in (VAR256, VAR512):
        for name, cls in (("mamba2", Mamba2Mixer), ("mamba", MambaMixer)):
            groups.append((f"{name} L={layout.L}", check_mixer, (name, functools.partial(cls, 512), dev, layout)))
    rows = []
    for name, check, args in groups:
        try:
            new = check(*args)
        except Exception as e:  # noqa: BLE001  a kernel that raises is a failed check: report it, run the others
            traceback.print_exc()
            new = [{"check": f"{name} raised", "dtype": "fp32", "rel_rms": float("nan"), "max_abs": float("nan"),
                    "ref_max_abs": None, "ref32_rel_rms": None, "tol": TOL["fp32"], "ok": False,
                    "error": f"{type(e).__name__}: {e}"}]
        for r in new:
            record(out_path, "parity_check_rel_rms", r["rel_rms"], "ratio",
                   **{k: v for k, v in r.items() if k != "rel_rms"}, **env)
        print(f"# {name} done", file=sys.stderr, flush=True)
        rows += new
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file to append one row per check to")
    parser.add_argument("--first-config", action="store_true",
                        help="skip Triton autotuning: take each kernel's first config (fast on a cold machine)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_parity_mamba: no CUDA device; run this on the GPU machine (see shared/GPU.md)")
    missing = [m for m in ("mamba_ssm", "causal_conv1d") if not has_module(m)]
    if missing:
        sys.exit(f"gpu_parity_mamba: {missing} not importable; install the wheels: python3 -m pip install "
                 "--no-index --no-deps --target /tmp/site .whl/*.whl and add /tmp/site to PYTHONPATH")
    apply_autotune_mode("first" if args.first_config else None)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    env = settings()
    rows = run_all(args.out, env)
    print(f"{'check':58s} {'dtype':5s} {'rel_rms':>9s} {'max_abs':>9s} {'ref32':>9s} {'tol':>7s}  ok")
    for r in rows:
        ref32 = "" if r["ref32_rel_rms"] is None else f"{r['ref32_rel_rms']:.2e}"
        ok = "yes" if r["ok"] else "NO"
        print(f"{r['check']:58s} {r['dtype']:5s} {r['rel_rms']:9.2e} {r['max_abs']:9.2e} {ref32:>9s} "
              f"{r['tol']:7.0e}  {ok}")
    print(env)
    # "(info)" rows document library behaviour the adapters do not rely on; they do not fail the run
    return 0 if all(r["ok"] for r in rows if "(info)" not in r["check"]) else 1


if __name__ == "__main__":
    sys.exit(main())
