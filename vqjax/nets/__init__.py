"""Flax linen networks: modules only, no training logic and no config objects."""
