"""Experiment entry points (thin absl wrappers around vqjax.train.experiment) and their configs."""
