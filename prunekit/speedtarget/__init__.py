"""Prune to a speed (issue 16): the depth/width split that reaches a predicted speed-up."""
