"""The shared body of the training entry points: `vqjax.train.launch.run` (also `vqjax train`)."""

from vqjax.train.launch import run

__all__ = ["run"]
