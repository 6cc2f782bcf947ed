"""Width methods (remove coupled channels)."""
