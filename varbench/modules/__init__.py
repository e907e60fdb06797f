"""Shared layers below the mixers and the intra variants: VAR's attention projections, RMS norms, the short
convolution, rotary embeddings."""

from varbench.modules.attention import ScaleAttention
from varbench.modules.norms import FusedRMSNormGated, GatedRMSNorm, RMSNorm
from varbench.modules.short_conv import ShortConvolution

__all__ = ["FusedRMSNormGated", "GatedRMSNorm", "RMSNorm", "ScaleAttention", "ShortConvolution"]
