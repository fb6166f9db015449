"""The Family interface: a model family as the one training loop sees it.

A family is built from a config (its builder is the one place that reads the config's
sections) on a mesh, and provides what `vqjax.train.train_and_evaluate` needs: the state, the
pure train step, the batches, evaluation, and the files it writes at the end. The loop knows
nothing else of it: a new family is one module and one entry in `vqjax.families.FAMILIES`.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Iterator

import numpy as np

from vqjax.core import optim
from vqjax.train.state import TrainState


class Family(abc.ABC):
    """One model family: `Family(config, mesh=mesh, workdir=workdir)`.

    The constructor checks everything that can be checked before step 1 (sizes, weight
    files, data, the tokenizer) and raises a sentence naming the setting.
    """

    name: ClassVar[str]
    # What one example of a batch is, for throughput ('images' -> images_per_sec).
    unit: ClassVar[str] = "images"
    # Metrics whose non-finite value stops the run (the objectives and gradient norms).
    watched: ClassVar[tuple] = ("loss", "grad_norm")
    # Metric -> its short name in the progress bar.
    progress: ClassVar[dict] = {"loss": "loss"}
    # Metrics of the last step reported in metrics.json besides `train_loss`.
    final_train_metrics: ClassVar[tuple] = ()
    # `TrainState.extra` entries that `config.init_from` carries over: name -> required (a
    # missing or misshapen required entry is an error; an optional one starts fresh).
    init_from_extra: ClassVar[dict] = {}

    frozen: tuple = ()  # arrays the train step reads but never trains (LPIPS weights)
    compiler_options: dict = {}
    schedules: dict = {}  # name -> learning-rate schedule, logged as scalars

    @abc.abstractmethod
    def example(self) -> dict:
        """A host-local training batch for shapes and data-dependent initialisers."""

    @abc.abstractmethod
    def create(self, rng, batch: dict) -> TrainState:
        """A fresh state (run under jit with replicated outputs; `batch` is global)."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: dict, *frozen) -> tuple[TrainState, dict]:
        """One pure step: (new state, flat dict of float32 scalar metrics)."""

    @abc.abstractmethod
    def train_batches(self, start_step: int) -> Iterator[dict]:
        """Endless host-local training batches from `start_step` on, the same batches an
        uninterrupted run would see."""

    @abc.abstractmethod
    def evaluate(self, state: TrainState) -> dict:
        """Metrics over the eval split (every process calls it; the result is global)."""

    def eval_images(self, state: TrainState) -> dict[str, np.ndarray]:
        """uint8 grids shown in TensorBoard at each periodic evaluation, by name."""
        del state
        return {}

    def finish(self, state: TrainState, workdir: str) -> dict:
        """Writes the family's final files (every process calls it; process 0 writes);
        returns metrics for metrics.json."""
        del state, workdir
        return {}

    def describe(self, state: TrainState, num_devices: int) -> str:
        """The run's first line: what is trained, how big, on how many devices."""
        return f"{self.name}: {optim.count_params(state.params):,} parameters, {num_devices} devices"

    def load_for_init(self, saved: dict) -> dict:
        """A saved tree read for `config.init_from`, in this family's current layout (older
        layouts upgraded)."""
        return saved
