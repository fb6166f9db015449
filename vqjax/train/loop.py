"""The training loop every family runs: steps, interval-averaged logging, the non-finite
stop, periodic evaluation, checkpoints and preemption.

`run_loop` reads nothing of a family but the names it is given (which metrics to watch and
show, the unit it counts); `vqjax.train.experiment.train_and_evaluate` sets it up.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vqjax.core import paths


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient."""


def log_line(result: dict) -> str:
    """One line for logs: the numeric metrics (a NaN shows as nan, it is not hidden)."""
    return ", ".join(f"{k}={v:.4g}" for k, v in result.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool))


def numeric_scalars(values: dict) -> dict:
    """The entries of `values` that are numbers (TensorBoard scalars)."""
    return {k: float(v) for k, v in values.items()
            if not isinstance(v, (str, bytes, dict)) and v is not None and np.ndim(v) == 0}


class Logger:
    """TensorBoard (process 0) plus a progress bar: scalars, text, images, lines."""

    def __init__(self, workdir: str, num_steps: int, start_step: int, tensorboard: bool = True):
        self.is_main = jax.process_index() == 0
        self.writer = None
        self.bar = None
        if self.is_main:
            from flax.metrics import tensorboard as tensorboard_lib
            from tqdm.auto import tqdm

            if tensorboard:
                # TensorFlow's file system writes the events, local or in a bucket alike.
                self.writer = tensorboard_lib.SummaryWriter(os.fspath(paths.join(workdir, "tensorboard")))
            self.bar = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            mininterval=5.0)

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        if self.writer is not None:
            for name, value in numeric_scalars(values).items():
                self.writer.scalar(prefix + name, value, step)
            self.writer.flush()

    def text(self, step: int, name: str, text: str) -> None:
        if self.writer is not None:
            self.writer.text(name, text, step)
            self.writer.flush()

    def images(self, step: int, grids: dict, prefix: str = "") -> None:
        """uint8 grids [H, W, C] or [H, W], by name."""
        if self.writer is not None:
            for name, grid in grids.items():
                grid = grid[..., None] if grid.ndim == 2 else grid
                self.writer.image(prefix + name, grid, step)
            self.writer.flush()

    def progress(self, step: int, postfix: dict) -> None:
        if self.bar is not None:
            # Postfix first: update() draws the bar, and should draw this step's values.
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(step - self.bar.n)

    def write(self, line: str) -> None:
        if self.is_main:
            if self.bar is not None:
                self.bar.write(line)
            else:
                print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def check_finite(step: int, metrics: dict, watched: tuple, last_checkpoint: Optional[int],
                 first_bad_step: Optional[int] = None) -> None:
    """Stops the run with a sentence when a watched metric is NaN or infinite. `first_bad_step`:
    the first step of the interval whose metrics were (the averages only show that one was)."""
    for name in watched:
        if name not in metrics:
            continue
        value = float(metrics[name])
        if not math.isfinite(value):
            where = (f"the last good checkpoint is step {last_checkpoint}" if last_checkpoint
                     else "no checkpoint was written yet")
            first = first_bad_step or step
            when = f"at step {first}" if first == step else f"at step {first} (found at the log of step {step})"
            raise NonFiniteLossError(
                f"The training {name} became {value} {when}; {where}. The usual causes: a learning "
                "rate too high for this model and batch (config.optim.learning_rate; "
                "config.optim.grad_clip_norm bounds the updates) or a bad batch (an image of step "
                f"{first}); fix the cause, then run again with the same --workdir to resume."
            )


def _disk_full(err: BaseException) -> bool:
    """Whether `err` or an exception it came from is a full disk (Orbax's asynchronous writes
    surface one wrapped, e.g. as "Event loop is closed")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


class CheckpointWriter:
    """The run's checkpoint manager, whose write errors are sentences: a full disk names the
    step being written, the directory and the last complete checkpoint."""

    def __init__(self, manager: ocp.CheckpointManager, last_complete: Optional[int]):
        self.manager, self.last_complete, self.writing = manager, last_complete, None

    def _explain(self, err: Exception, step: int) -> Optional[Exception]:
        """The sentence for a full disk; None for any other error (raised as it is)."""
        if not _disk_full(err):
            return None
        complete = f"step {self.last_complete}" if self.last_complete is not None else "none"
        return OSError(errno.ENOSPC, f"No space left on the device while saving step {step} to "
                                     f"{self.manager.directory} (last complete checkpoint: {complete}); free "
                                     "space or keep fewer checkpoints (config.train.keep_checkpoints), then run "
                                     "the same command to resume.")

    def save(self, step: int, state) -> None:
        # A save first waits for the previous one: an error here may be that write's.
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state))
        except Exception as err:  # pylint: disable=broad-except
            explained = self._explain(err, self.writing if self.writing is not None else step)
            if explained is None:
                raise
            raise explained from err
        if self.writing is not None:
            self.last_complete = self.writing
        self.writing = step

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # pylint: disable=broad-except
            explained = self._explain(err, self.writing)
            if explained is None:
                raise
            raise explained from err
        if self.writing is not None:
            self.last_complete, self.writing = self.writing, None


RATE_LABELS = {"images": "img", "code maps": "maps"}  # progress bar: img/s, maps/s


_NO_STEP = 2 ** 31 - 1  # "no non-finite step yet" in the running minimum


@functools.partial(jax.jit, static_argnames="watched")
def _accumulate(sums: Optional[tuple], metrics: dict, step, watched: tuple) -> tuple:
    """Running float32 sums of the metrics and the first step whose watched metrics were not
    finite (one dispatch per step); None starts them."""
    metrics = jax.tree.map(lambda m: m.astype(jnp.float32), metrics)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(metrics[n])) for n in watched if n in metrics] or [True]))
    first_bad = jnp.where(finite, _NO_STEP, jnp.asarray(step, jnp.int32))
    if sums is None:
        return metrics, first_bad
    return jax.tree.map(jnp.add, sums[0], metrics), jnp.minimum(sums[1], first_bad)


@dataclasses.dataclass
class LoopResult:
    state: Any
    last_metrics: Optional[dict]  # host copy of the last step's metrics; None if no step ran
    # None when this invocation trained for fewer than two steps (nothing timed after compiling).
    examples_per_sec: Optional[float]
    preempted: bool


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What the loop needs to know besides the step: `config.train`'s intervals and the
    family's names."""

    num_steps: int
    log_steps: int
    eval_steps: int
    ckpt_steps: int
    examples_per_step: int
    unit: str = "images"  # throughput is reported as `<unit>_per_sec`
    watched: tuple = ("loss",)
    progress: dict = dataclasses.field(default_factory=lambda: {"loss": "loss"})
    schedules: dict = dataclasses.field(default_factory=dict)

    @property
    def rate_name(self) -> str:
        return self.unit.replace(" ", "_") + "_per_sec"


class Preemption:
    """Whether to save and stop after a step, on a SIGTERM to any process.

    One process: a SIGTERM handler sets a flag. Several processes: JAX's coordination service
    (`jax.distributed.initialize`) catches the SIGTERM of any of them and names a step at
    which all of them answer True to `multihost_utils.reached_preemption_sync_point`, so every
    host saves the same step and none waits on a collective the others have left. (A handler
    of our own would replace the service's and leave the others training.)
    """

    def __init__(self):
        self.shared = jax.process_count() > 1
        self.requested = False
        self.previous_handler = None
        if not self.shared:
            self.previous_handler = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._request)

    def _request(self, *_):
        self.requested = True

    def reached(self, step: int) -> bool:
        """Call after every step, in order, on every process."""
        if self.shared:
            self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        if not self.shared:
            signal.signal(signal.SIGTERM, self.previous_handler)


def run_loop(state, train_step: Callable, batches: Iterator, settings: LoopSettings, *,
             manager: ocp.CheckpointManager, logger: Logger, last_checkpoint: Optional[int],
             periodic_eval: Callable[[Any], dict], eval_images: Callable[[Any], dict]) -> LoopResult:
    """Steps `state` from its step to `settings.num_steps` over global `batches`.

    Every `log_steps`: the metrics averaged over the steps since the last log (summed on the
    device, one transfer per log), the learning rates and the throughput go to TensorBoard
    and the progress bar, and a non-finite watched metric stops the run. Every `eval_steps`
    (not at the last step: the caller's final evaluation covers it): the family's evaluation
    and its images. Every `ckpt_steps` and at the end: a checkpoint; on SIGTERM a checkpoint
    and a return with `preempted=True`. Closes `logger`.
    """
    num_steps, start_step = settings.num_steps, int(state.step)
    preemption = Preemption()
    writer = CheckpointWriter(manager, last_checkpoint)
    timing = {"start": None, "examples": 0}
    last_log_time, last_log_step = time.perf_counter(), start_step
    metrics, sums, summed_steps = None, None, 0
    try:
        for step in range(start_step + 1, num_steps + 1):
            state, metrics = train_step(state, next(batches))
            sums = _accumulate(sums, metrics, step, settings.watched)
            summed_steps += 1
            if timing["start"] is None:  # the first step compiles: throughput starts after it
                jax.block_until_ready(metrics)
                timing["start"] = time.perf_counter()
            else:
                timing["examples"] += settings.examples_per_step

            if step % settings.log_steps == 0 or step == num_steps:
                totals, first_bad = jax.device_get(sums)
                averages = {k: float(v) / summed_steps for k, v in totals.items()}
                sums, summed_steps = None, 0
                check_finite(step, averages, settings.watched, last_checkpoint,
                             None if first_bad == _NO_STEP else int(first_bad))
                now = time.perf_counter()
                averages[settings.rate_name] = (step - last_log_step) * settings.examples_per_step / (now - last_log_time)
                last_log_time, last_log_step = now, step
                for name, schedule in settings.schedules.items():
                    averages[name] = float(schedule(step - 1))  # the rate this step used
                logger.scalars(step, averages, "train/")
                shown = {**settings.progress, settings.rate_name: RATE_LABELS.get(settings.unit, settings.unit) + "/s"}
                logger.progress(step, {short: averages[name] for name, short in shown.items() if name in averages})

            # The checkpoint comes before the evaluation of the same step, so that an evaluation
            # that fails never costs the training that led to it.
            preempted = preemption.reached(step)
            if step % settings.ckpt_steps == 0 or step == num_steps or preempted:
                check_finite(step, jax.device_get(metrics), settings.watched, last_checkpoint)
                writer.save(step, state)
                last_checkpoint = step
            if preempted:
                writer.wait()
                logger.write(f"SIGTERM: saved step {step} to {manager.directory}; run again to resume.")
                return LoopResult(state, jax.device_get(metrics), None, preempted=True)

            if step % settings.eval_steps == 0 and step != num_steps:
                eval_metrics = periodic_eval(state)
                logger.scalars(step, eval_metrics, "eval/")
                logger.images(step, eval_images(state), "eval/")
                logger.write(f"step {step}: {log_line(eval_metrics)}")
        jax.block_until_ready(state)
        seconds = time.perf_counter() - timing["start"] if timing["start"] else 0.0
    finally:
        writer.wait()
        preemption.close()
        logger.close()
    return LoopResult(state, None if metrics is None else jax.device_get(metrics),
                      timing["examples"] / seconds if timing["examples"] else None, preempted=False)
