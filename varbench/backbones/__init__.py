"""The shared scale-wise AR backbone: AdaLN blocks [intra] -> [inter-scale mixer] -> FFN, embeddings, head,
sampling, and the conversion of official VAR / M-VAR checkpoints."""

from varbench.backbones.scale_ar import ScaleAR

__all__ = ["ScaleAR"]
