"""Inter-scale token mixers: one module per family, each registered by one YAML in `varbench/configs/mixer/`. The YAML
`none` (`_target_: null`) registers the absence of one: `build` returns None and the block drops the branch.

Build one without Hydra through `varbench.registry.build("mixer", name, dim=..., num_heads=..., layer_idx=...)`.
"""

from varbench.mixers.base import State, TokenMixer, state_nbytes

__all__ = ["State", "TokenMixer", "state_nbytes"]
