"""Builders shared by the tests: a tiny tokenizer, tiny ScaleAR models of any registered mixer, random images, a
benchmark script as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

from varbench.backbones.scale_ar import ScaleAR
from varbench.registry import factory, load_option
from varbench.tokenizers import MultiScaleVQVAE

TINY_PN = (1, 2, 3, 4)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_script(name: str) -> ModuleType:
    """benchmarks/<name>.py loaded as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_tokenizer(patch_nums=TINY_PN, vocab_size=64, z_channels=8) -> MultiScaleVQVAE:
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(vocab_size=vocab_size, z_channels=z_channels, ch=32, patch_nums=patch_nums)
    with torch.no_grad():  # spread the codebook so that tokens are diverse
        vae.quantize.embedding.weight.normal_(0, 0.5)
    return vae.eval()


def tiny_model(mixer: str, intra: str = "none", depth=2, width=64, heads=2, vae=None, backend=None,
               **kw) -> ScaleAR:
    """A small ScaleAR; `backend` (e.g. "reference") replaces the configs' kernel choice of the mixer and intra."""
    vae = vae or tiny_tokenizer()
    options = [load_option(group, name) for group, name in (("mixer", mixer), ("intra", intra))]
    for option in options:
        if backend is not None and option is not None and "backend" in option:
            option.backend = backend
    model = ScaleAR(mixer=factory(options[0]), intra=factory(options[1]),
                    depth=depth, width=width, num_heads=heads, vocab_size=vae.vocab_size, latent_dim=vae.Cvae,
                    num_classes=10, patch_nums=vae.patch_nums, **{"drop_path_rate": 0.0, **kw})
    randomize_gates_(model)
    return model.eval()


@torch.no_grad()
def randomize_gates_(model: ScaleAR) -> None:
    """VAR's init makes every gate ~1e-5 (blocks are near identities), which would make a parity test blind to
    the mixers: re-draw the AdaLN projections and the head so that every branch matters."""
    shared = model.shared_ada_lin is not None  # shared AdaLN: one projection, plus an offset per block
    ada_lins = [model.shared_ada_lin[-1]] if shared else [b.ada_lin[-1] for b in model.blocks]
    for linear in ada_lins + [model.head_nm.ada_lin[-1], model.head]:
        linear.weight.normal_(0, linear.in_features ** -0.5)
        linear.bias.normal_(0, 0.1)
    for block in model.blocks if shared else ():
        block.ada_gss.normal_(0, 0.25)


def write_run(cfg, step: int = 1):
    """A run directory at `cfg.run_dir` as task=train leaves it, without training: a tokenizer file (outside the run)
    and one checkpoint of freshly built weights with its run spec. Returns (checkpoint folder, tokenizer file)."""
    from pathlib import Path

    from varbench.build import build_model, build_tokenizer
    from varbench.runs import describe_run
    from varbench.training import checkpoints
    from varbench.utils.checkpoint import save_atomic
    tokenizer_file = save_atomic(Path(cfg.run_dir).parent / f"tokenizer_{Path(cfg.run_dir).name}.safetensors",
                                 tensors=build_tokenizer(cfg, load=False).state_dict())
    folder = checkpoints.save(Path(cfg.run_dir) / "checkpoints", step, build_model(cfg).state_dict(), {},
                              meta=describe_run(cfg, tokenizer_file))
    return folder, tokenizer_file


class Images(torch.utils.data.Dataset):
    """`n` random 8x8 (image in [-1, 1], label 0) items from `seed`, as the project's data sets give them."""

    def __init__(self, seed: int, n: int = 12):
        self.x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0

    def describe(self):
        return f"Images(n={len(self.x)})"
