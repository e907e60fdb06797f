"""Mamba-2's state-space duality (SSD) scan with initial and final states, and its gated RMSNorm."""
