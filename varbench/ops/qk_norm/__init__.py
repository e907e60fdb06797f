"""VAR's q/k L2 normalisation in training: one Triton kernel forward and one backward over the qkv projection's output
(`kernel.py`); the torch form, the oracle, is `varbench.modules.fused.l2_qk` with its written backward
`L2QKTraining`."""
