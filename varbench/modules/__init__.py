"""Shared layers below the mixers and the intra variants: RMS norms, the short convolution, rotary embeddings.
(ScaleAttention joins them once the KV-cache change of mixers/attention.py has landed.)"""

from varbench.modules.norms import FusedRMSNormGated, GatedRMSNorm, RMSNorm
from varbench.modules.rotary import rotary
from varbench.modules.short_conv import ShortConvolution

__all__ = ["FusedRMSNormGated", "GatedRMSNorm", "RMSNorm", "ShortConvolution", "rotary"]
