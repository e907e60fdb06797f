"""The VQ-VAE decoder's RGB convolution (160 -> 3 channels, 3x3, 256 px) alone, by how many output channels it
computes and in which memory layout (issue 18 goal 2: session 33's profiles of VAR-d16's batch-64 generation on an
H100 spent 25 of the compiled decode's 123 ms in one cuDNN kernel, `convolve_common_engine_float_NHWC`, a direct
convolution without tensor cores, once per decode: the RGB convolution in channels_last. Computing it with its
filters padded by zero ones to 8, tried in that session, left the kernel and the 25 ms as they were; session 34's
run picked 32, an implicit GEMM: `varbench.tokenizers.fast_decode.PaddedOutputConv2d`).

Records, appended to OUT: `conv_latency_ms`, F.conv2d of a (batch, 160, 256, 256) bf16 input with `out_channels`
3x3 filters, per memory layout (channels_last, contiguous), with the kernel that took most of its GPU time
(torch.profiler): which padding or layout a decode mode should give the convolution.

    python benchmarks/narrow_conv.py OUT.jsonl [--batch 64] [--channels 3 8 16 32 64] [--tiny]
`--tiny`: small shapes on the CPU (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.eval.timing import time_ms  # noqa: E402
from varbench.utils.records import record  # noqa: E402

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def top_kernel(fn, cuda: bool) -> str | None:
    """The name of the kernel that took most of the GPU time of one `fn()` (None on a CPU)."""
    if not cuda:
        return None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return max(kernels, key=lambda e: e.device_time_total).key[:200] if kernels else None


def conv_records(out, batch: int, side: int, in_channels: int, channels, device, dtype) -> None:
    x = torch.randn(batch, in_channels, side, side, device=device, dtype=dtype)
    for name, layout in LAYOUTS.items():
        x_l = x.contiguous(memory_format=layout)
        for cout in channels:
            w = torch.randn(cout, in_channels, 3, 3, device=device, dtype=dtype).contiguous(memory_format=layout)
            b = torch.randn(cout, device=device, dtype=dtype)

            def conv():
                return F.conv2d(x_l, w, b, padding=1)
            timing = time_ms(conv, warmup=2, repeats=5)
            kernel = top_kernel(conv, device.type == "cuda")
            record(out, "conv_latency_ms", timing["median_ms"], "ms", out_channels=cout, in_channels=in_channels,
                   layout=name, batch=batch, side=side, dtype=str(dtype), kernel=kernel, timing=timing)
            print(f"conv {name} Cout {cout}: {timing['median_ms']:.2f} ms  {kernel}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", nargs="+", type=int, default=[3, 8, 16, 32, 64])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    if args.tiny:
        conv_records(args.out, 2, 16, 32, args.channels, device, dtype)
    else:
        conv_records(args.out, args.batch, 256, 160, args.channels, device, dtype)


if __name__ == "__main__":
    main()
