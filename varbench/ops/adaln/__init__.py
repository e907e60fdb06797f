"""The AdaLN block's gated residual and modulated LayerNorm in training: one Triton kernel forward and one backward
(`kernel.py`); the torch form, the oracle, is `varbench.modules.fused.ln_modulate` and `residual_modulate` under
autograd."""
