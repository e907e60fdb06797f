"""varbench: a benchmark suite for token mixers in scale-wise autoregressive image generation (VAR / M-VAR).

The Python API, for a notebook:

    import varbench
    model, tokenizer = varbench.load("runs/my_run")           # a trained run (or one of its checkpoints)
    images = model.generate(tokenizer, labels, cfg=1.5, top_k=900, top_p=0.96).images   # (B, 3, H, W) in [0, 1]
    mixer = varbench.build("mixer", "gla", dim=256, num_heads=4)    # any registry entry, by group and name
    model = varbench.build("model", "var_d16", mixer="mamba2")      # a fresh (randomly initialised) model

`load` and `build` are imported on first use, so `import varbench` stays cheap.
"""

from varbench.layout import ScaleLayout

__all__ = ["ScaleLayout", "build", "load"]
__version__ = "0.1.0"


def load(source, device="cpu"):
    """`(model, tokenizer)` of a trained run, in eval mode on `device`, rebuilt from what the run recorded.

    Args:
        source: a run directory, its checkpoints folder, one checkpoint folder or a model.safetensors file.
        device: where the model and tokenizer go. Default: "cpu".

    See `varbench.runs.load` (the rules: the architecture from the run spec, the tokenizer checked by sha256).
    """
    from varbench.runs import load as load_run  # torch and the models: imported on first use

    return load_run(source, device)


def __getattr__(name: str):
    # `build` is the module varbench.build, made callable: importing a submodule sets the package attribute of its
    # name to the module, so a function of that name here would be replaced by the module on the first import
    if name == "build":
        import varbench.build
        return varbench.build
    raise AttributeError(f"module 'varbench' has no attribute {name!r}")
