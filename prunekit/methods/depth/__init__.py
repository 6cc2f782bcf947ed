"""Depth methods (remove whole blocks or layers)."""
