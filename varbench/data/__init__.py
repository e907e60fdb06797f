"""Data layer (being written)."""
