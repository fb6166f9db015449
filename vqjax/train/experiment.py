"""`train_and_evaluate(config, workdir)`: one experiment of any family, from the checks
before step 1 to metrics.json.

Outputs in `workdir`:
  config.json       the resolved config (with `family`), written once the run is known to be
                    able to use the workdir (checks passed, checkpoint restored or state made)
  run.lock          while the run lasts: who holds the workdir (vqjax.train.workdir_lock)
  checkpoints/      Orbax checkpoints of the train state (async; the newest
                    `train.keep_checkpoints` kept)
  tensorboard/      interval-averaged training metrics, learning rates, evaluations, the
                    config as text and the family's evaluation images
  metrics.json      the final evaluation (written once training has finished)
  + the family's own files (reconstructions.png, samples.png, tokens/, ...)
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vqjax import families
from vqjax.core import checkpoints, parallel, paths
from vqjax.families.base import Family
from vqjax.inference import legacy
from vqjax.train import config_changes, loop as loop_lib
from vqjax.train.workdir_lock import WorkdirBusyError, WorkdirLock
from vqjax.train.state import TrainState


def check_train_config(train_cfg) -> None:
    for name in ("num_steps", "log_steps", "eval_steps", "ckpt_steps"):
        if int(train_cfg[name]) <= 0:
            raise ValueError(f"config.train.{name} is {train_cfg[name]}; it must be a positive number of steps.")


def prepare(config, workdir: str, devices=None) -> tuple[str, jax.sharding.Mesh]:
    """The start of every run: the config's checks, the workdir (absolute if local, created) and
    the mesh, checked against the batch sizes. Nothing is written into the workdir yet."""
    if "family" not in config or config.family not in families.FAMILIES:
        raise ValueError(f"config.family is {config.get('family')!r}; set it to one of "
                         f"{sorted(families.FAMILIES)} in the config file.")
    check_train_config(config.train)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.data.batch_size, mesh)
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
    workdir = os.fspath(paths.makedirs(workdir))  # absolute if local; a bucket URI as given
    return workdir, mesh


def resume_notes(config, workdir: str, allow_config_change: bool) -> list[str]:
    """For a workdir holding a checkpoint: the settings changed since its run started (logged),
    or a ValueError for those that would change what it trains (vqjax.train.config_changes)."""
    saved = paths.join(workdir, "config.json")
    if not checkpoints.saved_steps(workdir) or not saved.is_file():
        return []
    current = json.loads(config.to_json_best_effort())
    return config_changes.check_resume(paths.read_json(saved), current, os.fspath(saved), allow_config_change)


@contextlib.contextmanager
def hold_workdir(workdir: str) -> Iterator[None]:
    """Process 0 holds the workdir's lock for the run; every process learns whether it got it
    (so that a refused multi-host run stops on all hosts, not only on process 0)."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir).acquire()
        except WorkdirBusyError as err:
            error = err
    if jax.process_count() > 1:
        held = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not held and error is None:
            error = WorkdirBusyError(f"{workdir} is in use by another run (process 0 says why).")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def load_init_from(path: str, family: Family, abstract_state: TrainState, fresh_state: TrainState,
                   params_ema_decay: float, mesh) -> tuple[TrainState, list[str]]:
    """`config.init_from`: the parameters of another run's (or a converted model's) latest
    checkpoint, and the `extra` entries the family carries over (`Family.init_from_extra`).
    Read as saved, so the other run may have used another optimizer; the optimizer state and
    the step start fresh. Returns the state and what was loaded."""
    from vqjax.core import optim

    step, saved = checkpoints.read_latest(path, "config.init_from")
    saved = family.load_for_init(saved)
    problem = checkpoints.first_mismatch({"params": saved.get("params")}, {"params": abstract_state.params})
    if problem:
        raise ValueError(f"The checkpoint at step {step} in {path} (config.init_from) does not fit this config "
                         f"({problem}); use the model and quantizer settings it was trained with.")
    loaded = ["params"]
    extra = dict(fresh_state.extra)
    saved_extra = saved.get("extra", {})
    for key, required in family.init_from_extra.items():
        target = abstract_state.extra[key]
        problem = (f"extra/{key} is missing" if key not in saved_extra
                   else checkpoints.first_mismatch(saved_extra[key], target))
        if problem is None:
            extra[key] = checkpoints.restructure(saved_extra[key], target)
            loaded.append(key)
        elif required:
            raise ValueError(f"The checkpoint at step {step} in {path} (config.init_from) does not fit this "
                             f"config ({problem}); use the quantizer settings it was trained with.")
    # The state is replicated (vqjax.core.parallel); through host memory, as on several hosts.
    params = parallel.replicate(checkpoints.restructure(saved["params"], abstract_state.params), mesh)
    state = fresh_state.replace(
        params=params, extra=parallel.replicate(extra, mesh),
        # The weight average, if any, restarts from the loaded weights too.
        ema_params=optim.init_ema_params(params, params_ema_decay))
    return state, sorted(loaded)


def train_and_evaluate(config, workdir: str, *, devices=None, allow_config_change: bool = False,
                       **family_kwargs: Any) -> dict:
    """Trains `config` (any family) in `workdir`, resuming from its latest checkpoint if it
    has one; returns the final metrics (also written to metrics.json). A resume whose config
    changes the model, quantizer, data or batch size is refused unless `allow_config_change`.
    `family_kwargs` go to the family's builder (benchmarks pass random LPIPS weights)."""
    workdir, mesh = prepare(config, workdir, devices)
    notes = resume_notes(config, workdir, allow_config_change)
    with hold_workdir(workdir):
        return run(config, workdir, mesh, notes, family_kwargs)


def run(config, workdir: str, mesh, notes: list[str], family_kwargs: dict) -> dict:
    """The body of `train_and_evaluate`, with the workdir prepared and held."""
    is_main = jax.process_index() == 0
    replicated = parallel.replicated(mesh)
    family = families.build(config, mesh=mesh, workdir=workdir, **family_kwargs)
    options = family.compiler_options

    # --- Compiled step and state: the workdir's latest checkpoint, else init_from, else fresh.
    frozen = parallel.replicate(family.frozen, mesh)
    compiled_step = jax.jit(family.train_step, donate_argnums=0, out_shardings=(replicated, replicated),
                            compiler_options=options)
    train_step = lambda state, batch: compiled_step(state, batch, *frozen)
    manager = checkpoints.checkpoint_manager(workdir, config.train.keep_checkpoints)
    example = parallel.to_global(family.example(), mesh)
    create = jax.jit(family.create, out_shardings=replicated, compiler_options=options)
    init_rng = jax.random.key(config.seed)
    abstract_state = checkpoints.abstract_like(jax.eval_shape(create, init_rng, example), replicated)
    latest = manager.latest_step()
    if latest is not None:
        if legacy.is_old_tokenizer_tree(manager.item_metadata(latest)):
            raise ValueError(legacy.resume_refusal(workdir))
        state = checkpoints.restore_state(manager, latest, abstract_state)
        notes.append(f"resumed from {manager.directory} at step {latest}")
    else:
        state = create(init_rng, example)
        if config.get("init_from"):
            state, loaded = load_init_from(config.init_from, family, abstract_state, state,
                                           float(config.optim.get("params_ema_decay", 0.0)), mesh)
            notes.append(f"initialised {', '.join(loaded)} from {config.init_from}")
    start_step, num_steps = int(state.step), int(config.train.num_steps)
    if is_main:
        checkpoints.write_config(workdir, config)  # the run can use this workdir: now it is its
        print(f"vqjax: {family.describe(state, mesh.devices.size)}, starting at step {start_step} of "
              f"{num_steps}" + "".join(f"; {note}" for note in notes) + ".", flush=True)
    for note in notes:
        logging.info(note)

    # --- The loop.
    logger = loop_lib.Logger(workdir, num_steps, start_step, bool(config.train.get("tensorboard", True)))
    logger.text(start_step, "config", "```\n" + json.dumps(json.loads(config.to_json_best_effort()), indent=2,
                                                          sort_keys=True) + "\n```")
    batches = (parallel.to_global(batch, mesh) for batch in family.train_batches(start_step))
    settings = loop_lib.LoopSettings(
        num_steps=num_steps, log_steps=int(config.train.log_steps), eval_steps=int(config.train.eval_steps),
        ckpt_steps=int(config.train.ckpt_steps), examples_per_step=int(config.data.batch_size), unit=family.unit,
        watched=family.watched, progress=family.progress, schedules=family.schedules)
    try:
        result = loop_lib.run_loop(state, train_step, batches, settings, manager=manager, logger=logger,
                                   last_checkpoint=latest, periodic_eval=family.evaluate,
                                   eval_images=family.eval_images)
        if result.preempted:
            return {"step": int(result.state.step), "preempted": True}

        # --- Final evaluation and outputs.
        state = result.state
        final = family.evaluate(state)
        final["step"] = int(state.step)
        final[settings.rate_name] = result.examples_per_sec
        if result.last_metrics is not None:
            final["train_loss"] = float(result.last_metrics["loss"])
            for name in family.final_train_metrics:
                if name in result.last_metrics:
                    final[name] = float(result.last_metrics[name])
        outputs = family.finish(state, workdir)
        skipped = {**final.get("skipped", {}), **outputs.pop("skipped", {})}  # both say what they left out
        final.update(outputs, **({"skipped": skipped} if skipped else {}))
    finally:
        manager.close()
    if is_main:
        paths.write_json(paths.join(workdir, "metrics.json"), final)
        skipped = f"; skipped: {', '.join(final['skipped'])}" if final.get("skipped") else ""
        print(f"vqjax: final {loop_lib.log_line(dict(sorted(final.items())))}{skipped}", flush=True)
    return final
