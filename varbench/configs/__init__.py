"""The Hydra config root shipped with the package: each group folder is a registry (varbench/registry.py)."""
