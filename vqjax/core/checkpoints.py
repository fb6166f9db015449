"""Orbax checkpoints of any pytree: the manager, shape-checked restore, the raw read that
`config.init_from`, the inference loaders and the converters share, and config.json.

A model directory is a workdir: `config.json` plus `checkpoints/<step>/` holding a train
state (`vqjax.train.state.TrainState`: at least `params` and `extra`; a converted model holds
no optimizer state).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from vqjax.core import paths


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=True,
        create=True,
    )
    return ocp.CheckpointManager(paths.join(workdir, "checkpoints"),
                                 options=options, item_handlers=ocp.StandardCheckpointHandler())


def save_tree(workdir: str, step: int, tree: Any) -> None:
    """Writes one checkpoint and waits for it (Orbax renames a finished temporary directory,
    so a kill leaves no half-written checkpoint)."""
    manager = checkpoint_manager(workdir, keep=1)
    manager.save(step, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    manager.close()


def abstract_like(tree: Any, sharding) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def shapes_by_path(tree: Any) -> dict:
    def name(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return {"/".join(map(name, path)): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def first_mismatch(saved: Any, wanted: Any) -> Optional[str]:
    """The first array of `wanted` whose shape in `saved` differs (or is missing), if any."""
    saved, wanted = shapes_by_path(saved), shapes_by_path(wanted)
    for path, shape in sorted(wanted.items()):
        if saved.get(path) != shape:
            return f"{path} is {saved.get(path, 'missing')} in the checkpoint, {shape} in the config"
    return None


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restores checkpoint `step` into `abstract_state`; a mismatch becomes one clear sentence."""
    # The parameters are compared first: their mismatch is the one a sentence can name usefully.
    problem = first_mismatch(manager.item_metadata(step), {"params": abstract_state.params})
    if problem is None:
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except (ValueError, KeyError, TypeError) as err:
            problem = str(err).splitlines()[0][:300]
    raise ValueError(
        f"The checkpoint at step {step} in {manager.directory} does not match this config "
        f"({problem}); resume with the config it was written with, or start in a new --workdir."
    )


def restructure(saved: Any, like: Any) -> Any:
    """The arrays of `saved` (as restored: nested dicts) in the tree structure of `like` (e.g.
    the dataclasses of a state), matched by path; call `first_mismatch` first."""
    by_path = dict(zip(shapes_by_path(saved), jax.tree.leaves(saved)))
    names = list(shapes_by_path(like))
    return jax.tree.unflatten(jax.tree.structure(like), [by_path[name] for name in names])


def read_latest(workdir: str, what: str) -> tuple[int, dict]:
    """(step, saved tree of arrays on one device) of the newest checkpoint in `workdir`; `what` names
    the setting that pointed here, for the error sentence."""
    directory = paths.join(workdir, "checkpoints")
    step = None
    if directory.is_dir():
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                        item_handlers=ocp.StandardCheckpointHandler())
        step = manager.latest_step()
    if step is None:
        raise ValueError(f"{what} is {workdir!r} but {directory} holds no checkpoint; point it at "
                         "the workdir of a run that saved one, or a directory written by "
                         "`python -m vqjax.convert taming`.")
    # Restored onto this process's first device whatever topology saved it (a pod's run read in
    # a one-device notebook); callers place the arrays where they need them.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step))
    saved = manager.restore(step, args=ocp.args.StandardRestore(target))
    manager.close()
    return step, saved


def saved_steps(workdir: str) -> list[int]:
    """The steps of the finished checkpoints in `workdir` (Orbax names a finished one by its
    step; one being written carries a temporary suffix)."""
    directory = paths.join(workdir, "checkpoints")
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The `config.json` a training run or a converter wrote, with lists back as tuples
    (module fields must be hashable)."""
    path = paths.join(workdir, "config.json")
    if not path.is_file():
        raise ValueError(f"{workdir} has no config.json; it is neither a vqjax workdir nor a "
                         "directory written by `python -m vqjax.convert taming`.")
    raw = paths.read_json(path)

    def tuples(node):
        if isinstance(node, dict):
            return {k: tuples(v) for k, v in node.items()}
        return tuple(tuples(v) for v in node) if isinstance(node, list) else node

    return ml_collections.ConfigDict(tuples(raw))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True))
