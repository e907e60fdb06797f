"""varbench: a benchmark suite for token mixers in scale-wise autoregressive image generation (VAR / M-VAR)."""

from varbench.layout import ScaleLayout

__all__ = ["ScaleLayout"]
__version__ = "0.1.0"
