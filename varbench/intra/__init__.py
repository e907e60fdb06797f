"""Intra-scale variants: what happens inside one scale. Each is one module plus one YAML in `varbench/configs/intra/`;
`none` (no intra branch, VAR) is the YAML with `_target_: null`."""
