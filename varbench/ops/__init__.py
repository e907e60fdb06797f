"""The math of each token-mixing operation: `reference.py` (pure torch, the CPU oracle) beside `kernel.py` (GPU
libraries)."""
