"""M-VAR-d16's SSD scan at one sampling step per scale, with the configured chunk against a chunk fitted to the scale
(issue 18 goal 2, M-VAR sampling: session 44's eager batch-64 profile on an H100 spent 57.7 of the GPU's 323.8 ms in
mamba_ssm's scan kernels, `_chunk_scan_fwd_kernel` alone 35.1 ms over 160 calls, about as much per call at every
scale).

mamba_ssm sizes its kernels' grids by the chunk length, not by the tokens: a scale of l tokens in a chunk of 256
launches the programs of 256 rows, the rows past l masked but computed. Every VAR scale fits one chunk of 256, so a
chunk of the next power of two >= l (at least 16) is the same one-chunk scan over fewer padded rows (mamba2's
`fit_chunk`, whose `fitted_chunk` this uses).

Records, appended to OUT, per scale (l = p * p tokens for VAR's patch numbers) and chunk (`configured`: 256;
`fitted`): `ssd_step_us`, the scan from a carried fp32 state (batch 128: 64 images and their CFG twins; 32 heads of
64, state 64, one group), microseconds per call replayed from a CUDA graph of 20 calls (eager on a CPU), with the
GPU time per kernel (torch.profiler) and, for `fitted`, the largest differences of its outputs and final state from
`configured`'s.

    python benchmarks/ssd_scales.py OUT.jsonl [--batch 128] [--chunk 256] [--backend mamba_ssm|reference] [--tiny]
`--tiny`: small shapes through the reference scan on a CPU (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.mixers.mamba2 import fitted_chunk  # noqa: E402
from varbench.ops.ssd.reference import ssd_scan_ref  # noqa: E402
from varbench.utils.records import record  # noqa: E402

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR-d16's scales at 256 px
CALLS = 20  # scans per graph: one replay's time / CALLS is one scan's


def step_inputs(batch, tokens, heads, head_dim, d_state, device, dtype):
    """One scale's scan inputs and a carried state, as M-VAR's step hands them to the scan."""
    g = torch.Generator(device=device).manual_seed(tokens)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, device=device, dtype=dt)
    return dict(x=randn(batch, tokens, heads, head_dim), dt=randn(batch, tokens, heads),
                A=-torch.rand(heads, generator=g, device=device) * 8, B=randn(batch, tokens, 1, d_state),
                C=randn(batch, tokens, 1, d_state), D=torch.ones(heads, device=device),
                dt_bias=randn(heads, dt=torch.float32) - 4,
                initial_state=randn(batch, heads, head_dim, d_state, dt=torch.float32))


def us_per_scan(fn, cuda: bool) -> float:
    """Median microseconds per `fn()`: replayed from a CUDA graph of CALLS calls on a GPU, eager on a CPU."""
    if not cuda:
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # autotuning and caches before the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return statistics.median(times)


def kernel_us(fn) -> dict:
    """GPU microseconds per kernel of one `fn()` (torch.profiler), largest first."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return {e.key[:120]: round(e.device_time_total, 2) for e in sorted(kernels, key=lambda e: -e.device_time_total)}


def scale_records(out, args, scan, device, dtype) -> None:
    cuda = device.type == "cuda"
    for p in args.patch_nums:
        tokens = p * p
        inputs = step_inputs(args.batch, tokens, args.heads, args.head_dim, args.d_state, device, dtype)
        results = {}
        for name, chunk in (("configured", args.chunk), ("fitted", fitted_chunk(tokens, args.chunk))):
            def fn(chunk=chunk):
                return scan(**inputs, chunk_size=chunk, dt_softplus=True)
            y, final = fn()
            results[name] = (y, final)
            diffs = {}
            if name == "fitted":
                y0, final0 = results["configured"]
                diffs = {"max_abs_diff_y": (y.float() - y0.float()).abs().max().item(),
                         "max_abs_diff_state": (final - final0).abs().max().item(),
                         "bitwise_equal": bool(torch.equal(y, y0) and torch.equal(final, final0))}
            us = us_per_scan(fn, cuda)
            record(out, "ssd_step_us", us, "us", chunk_kind=name, chunk_size=chunk, tokens=tokens,
                   batch=args.batch, heads=args.heads, head_dim=args.head_dim, d_state=args.d_state,
                   backend=args.backend, dtype=str(dtype), timing="cuda graph replay" if cuda else "eager",
                   kernels=kernel_us(fn) if cuda else None, **diffs)
            print(f"l={tokens:4d} {name:10s} chunk {chunk:4d}: {us:8.1f} us {diffs}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=128, help="images x 2 (CFG)")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256, help="the configured chunk (Mamba2's default)")
    parser.add_argument("--patch-nums", nargs="+", type=int, default=list(PATCH_NUMS))
    parser.add_argument("--backend", default="mamba_ssm", choices=("mamba_ssm", "reference"))
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.heads, args.head_dim, args.d_state, args.backend = 2, 2, 8, 8, "reference"
        args.patch_nums = [1, 2, 5]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.backend == "mamba_ssm":
        from varbench.ops.ssd.kernel import ssd_scan as scan
    else:
        scan = ssd_scan_ref
    scale_records(args.out, args, scan, device, dtype)


if __name__ == "__main__":
    main()
