"""Softmax attention restricted by the scale layout (block-causal, block-diagonal, 2-D windows)."""
