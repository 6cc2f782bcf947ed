"""Saving and reloading pruned models."""
