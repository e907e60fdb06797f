"""Time VAR's VQ-VAE decode (`fhat_to_img`: post_quant_conv + decoder, 256 px, random weights) in each decode mode
(varbench/tokenizers/fast_decode.py) under bf16 autocast, at each batch, and append one JSON line per (mode, batch) to
OUT: `decode_latency_ms` (median of the timed calls after one untimed warm-up), `first_call_s` (the warm-up call:
for "compiled" its compile time plus one decode), TFLOP/s from the analytic decoder FLOPs, and how far its images are
from the eager images of the same latent (`max_abs_diff_vs_eager`, images in [-1, 1]; bf16 rounds at about 8e-3).

Issue 18 goal 2: VAR-d16 sampling at batch 64 in <= 300 ms with the decode; the eager decode alone took 182-184 ms
of session 7's 408-434 ms. The latency of sampling in a mode is the bench's `latency_wo_decode_ms` plus this.

    python benchmarks/decode_modes.py OUT.jsonl [--modes eager channels_last compiled] [--batches 1 64]
        [--cudnn-benchmark]
`--cudnn-benchmark` times each mode also with `torch.backends.cudnn.benchmark` on (cuDNN times its convolution
algorithms at each new shape and keeps the fastest, instead of its heuristic's pick; records say `cudnn_benchmark`):
a measurement before any decode mode turns it on. `--tiny` times a small VQ-VAE instead (a CPU check of the script,
not a measurement).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.eval.flops import decoder_flops  # noqa: E402
from varbench.eval.timing import first_call_s, time_ms  # noqa: E402
from varbench.tokenizers import MultiScaleVQVAE  # noqa: E402
from varbench.tokenizers.fast_decode import DECODE_MODES  # noqa: E402
from varbench.utils.records import record  # noqa: E402

TINY = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 4))


def decode_records(out, vae: MultiScaleVQVAE, modes, batches, repeats: int, device: torch.device,
                   cudnn_benchmarks=(False,)) -> list[dict]:
    """Time `vae.fhat_to_img` in each mode at each batch (bf16 autocast on CUDA, fp32 elsewhere), with
    `torch.backends.cudnn.benchmark` at each of `cudnn_benchmarks`; one record each."""
    side, flops, rows = vae.patch_nums[-1], decoder_flops(vae), []
    dtype = torch.bfloat16 if device.type == "cuda" else None
    for batch in batches:
        f_hat = torch.randn(batch, vae.Cvae, side, side, generator=torch.Generator().manual_seed(batch)).to(device)

        def decode():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return vae.fhat_to_img(f_hat)
        vae.set_decode_mode("eager")
        eager = decode().float()
        for mode in modes:
            for benchmark in cudnn_benchmarks:
                vae.set_decode_mode("eager")  # a fresh mode: graphs recapture (a capture fixes the algorithms)
                vae.set_decode_mode(mode)
                with torch.backends.cudnn.flags(enabled=True, benchmark=benchmark, deterministic=False):
                    first = first_call_s(decode)
                    timing = time_ms(decode, warmup=0, repeats=repeats)
                    diff = (decode().float() - eager).abs().max().item()
                ms = timing["median_ms"]
                rows.append(record(out, "decode_latency_ms", ms, "ms", decode_mode=mode, batch=batch,
                                   cudnn_benchmark=benchmark, first_call_s=first,
                                   tflops=flops * batch / (ms * 1e-3) / 1e12, decode_flops_per_image=flops,
                                   max_abs_diff_vs_eager=diff, autocast="bf16" if dtype else "none",
                                   image_size=vae.image_size, random_weights=True, timing=timing))
                print(f"decode b{batch} {mode}{' cudnn.benchmark' if benchmark else ''}: {ms:.1f} ms, first call "
                      f"{first:.1f} s, max |diff| vs eager {diff:.2e}")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--modes", nargs="+", default=list(DECODE_MODES), choices=DECODE_MODES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cudnn-benchmark", action="store_true", help="each mode also with cudnn.benchmark on")
    parser.add_argument("--tiny", action="store_true", help="a small VQ-VAE: a CPU check of the script")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(**(TINY if args.tiny else {})).eval().to(device)
    decode_records(args.out, vae, args.modes, args.batches, args.repeats, device,
                   (False, True) if args.cudnn_benchmark else (False,))


if __name__ == "__main__":
    main()
