"""VAR's multi-scale residual VQ-VAE tokenizer (official architecture and state-dict names)."""

from varbench.tokenizers.convert import load_official_vqvae, vqvae_from_official_args
from varbench.tokenizers.vqvae import MultiScaleVQVAE

__all__ = ["MultiScaleVQVAE", "load_official_vqvae", "vqvae_from_official_args"]
