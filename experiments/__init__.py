"""Experiment entry points (thin absl wrappers around vqjax.trainer) and their configs."""
