"""Faithfulness checks against tensors produced by the official VAR / M-VAR code (`check-golden`)."""

from varbench.compat.golden import check_golden

__all__ = ["check_golden"]
