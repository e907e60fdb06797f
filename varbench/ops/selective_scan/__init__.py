"""Mamba-1's selective scan (S6) with a carried state: a torch reference, and mamba_ssm's zero-state kernel plus a
closed-form correction for the initial state."""
