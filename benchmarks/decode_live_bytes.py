"""What one VAR-d16 generation keeps alive when its tokenizer decode starts, on CPU (issue 18 goal 2: the decode's
activations stack on it at the batch-64 sampling peak).

A `TorchDispatchMode` counts the bytes of every storage an op returns while some tensor still views it (weak
references), and reads the count when the decoder is entered. Weights built before the count are not in it; the
low-precision copies autocast caches of them are. Session 24 found 0.57 GiB of such copies alive at the decode;
`--keep-casts` measures the sampler without dropping them (as before), for the comparison.

    python benchmarks/decode_live_bytes.py results/cpu_memory/live_bytes.jsonl [--keep-casts]

Writes one `live_bytes_at_decode` record (replacing this variant's earlier one). `LiveBytes` and `live_at_decode`
are what a harness for another system's sampler reuses (the official VAR's count was taken so).
"""

from __future__ import annotations

import argparse
import sys
import weakref
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from op_count import var_d16  # noqa: E402

from varbench.backbones import sampling  # noqa: E402
from varbench.utils.records import make_record, replace_records  # noqa: E402

MIB = 2 ** 20


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages that ops returned and some tensor still views (`live`), counted while active."""

    def __init__(self):
        super().__init__()
        self.live, self.views, self.sizes = 0, {}, {}

    def _dropped(self, key) -> None:
        self.views[key] -= 1
        if not self.views[key]:
            self.live -= self.sizes.pop(key)
            del self.views[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                key = t.untyped_storage().data_ptr()
                if key not in self.views:
                    self.views[key], self.sizes[key] = 0, t.untyped_storage().nbytes()
                    self.live += self.sizes[key]
                self.views[key] += 1
                weakref.finalize(t, self._dropped, key)
        return out


def live_at_decode(generate, decoder: torch.nn.Module) -> int:
    """The live bytes (`LiveBytes`) when `decoder` is entered during `generate()`."""
    counter, seen = LiveBytes(), []
    handle = decoder.register_forward_pre_hook(lambda *_: seen.append(counter.live))
    try:
        with counter:
            generate()
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"the decoder ran {len(seen)} times in one generation, expected once")
    return seen[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="JSON-lines file to write the record into")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--keep-casts", action="store_true",
                        help="do not drop autocast's cached weight copies before the decode (the sampler before "
                             "session 24)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = var_d16(width=1024, ch=160, device="cpu")
    draw = sampling.ScaleSampler(model, tokenizer, cfg=1.5, top_k=900, top_p=0.96)
    labels = torch.arange(args.batch)

    def generate():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            draw(labels, generator=torch.Generator().manual_seed(0))
    keep = mock.patch.object(sampling, "drop_cached_weight_casts", lambda: None) if args.keep_casts else nullcontext()
    with keep:
        live = live_at_decode(generate, tokenizer.decoder)
    variant = "weight casts kept (before session 24)" if args.keep_casts else "weight casts dropped"
    record = make_record("live_bytes_at_decode", live, "bytes", system="varbench", model="VAR-d16", batch=args.batch,
                         precision="bf16 autocast (CPU)", variant=variant,
                         protocol="tensor bytes alive when the decoder is entered (benchmarks/decode_live_bytes.py); "
                                  "weights not counted, their autocast copies counted; CFG 1.5, top-k 900, top-p 0.96")
    replace_records(args.out, [record], lambda r: r.get("system") == "varbench" and r.get("variant") == variant)
    print(f"{variant}: {live / MIB:.1f} MiB alive at the decode")


if __name__ == "__main__":
    main()
