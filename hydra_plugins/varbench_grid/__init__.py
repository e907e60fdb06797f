"""Hydra discovers plugins only under the `hydra_plugins` namespace package: the grid sweeper lives here. This folder
is importable because `python run.py` puts the checkout on sys.path (the script's folder)."""
