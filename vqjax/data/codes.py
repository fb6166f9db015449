"""Code maps (or latents) of a dataset, encoded once by a tokenizer and cached in the workdir.

A prior trains on code maps, not images: `cached_codes` runs the tokenizer's encoder over a
split once (data-parallel over the mesh) and keeps the result in
`<workdir>/tokens/<split>.npz`: `codes [N, h, w]` (uint16 when K <= 65536), `labels [N]` and
a description of what made them (tokenizer directory and checkpoint step, data settings). A
later run, or a resumed one, reads the file; a file made by another tokenizer or other data is
refused rather than silently reused.

Augmentation: images are encoded deterministically (centre crop); with `flip=True` the
mirrored image is encoded too (the code map of a flipped image is not the flipped code map),
doubling the training set as taming's and MaskGIT's random flips do.

With `latents=True` the same machinery keeps the encoder's outputs before quantisation,
`latents [N, h, w, D]` (float32) in `<workdir>/latents/<split>.npz`: latent diffusion's data.

`batches` turns the arrays into a training stream that is a pure function of (seed, step), so
a resumed run sees the batches an uninterrupted one would; `eval_batches` is one padded pass.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from vqjax.core import parallel, paths
from vqjax.data import images as data_lib

# The data settings that change which code maps a split gives.
_DATA_FIELDS = ("source", "name", "path", "data_dir", "image_size", "channels", "crop")


def _key(arrays_or_flag) -> str:
    """'latents' or 'codes': what a cache holds."""
    latents = arrays_or_flag if isinstance(arrays_or_flag, bool) else "latents" in arrays_or_flag
    return "latents" if latents else "codes"


# The quantizer settings that decide what a code means (a cache of another quantizer is refused).
_QUANTIZER_FIELDS = ("kind", "num_codes", "levels", "stage", "depth", "shared_codebook")


def describe(tokenizer, tokenizer_dir: str, data_cfg, split: str, flip: bool, limit: int) -> dict:
    quantizer_cfg = tokenizer.config.quantizer
    description = {"tokenizer_dir": os.fspath(paths.resolve(tokenizer_dir)), "tokenizer_step": tokenizer.step,
                   "split": split, "flip": bool(flip), "limit": int(limit),
                   "quantizer": {k: quantizer_cfg.get(k) for k in _QUANTIZER_FIELDS if k in quantizer_cfg},
                   **{k: data_cfg.get(k) for k in _DATA_FIELDS}}
    return json.loads(json.dumps(description))  # as the cache stores it (tuples as lists)


def encode_split(tokenizer, data_cfg, split: str, *, flip: bool, batch_size: int, mesh, limit: int = 0,
                 latents: bool = False) -> dict:
    """Code maps of every image of `split` (the first `limit` when > 0), and of its mirror image
    with `flip`, in the split's order: {'codes': [N or 2N, h, w], 'labels': [N or 2N]}; with
    `latents` the encoder's outputs {'latents': [N or 2N, h, w, D]} instead of the codes."""
    replicated = parallel.replicated(mesh)
    encode = jax.jit(tokenizer.latents_fn() if latents else tokenizer.encode_fn(), out_shardings=replicated,
                     compiler_options=tokenizer.compiler_options)
    weights = parallel.replicate(tokenizer.weights, mesh)
    codes, labels, flipped_codes = [], [], []
    for batch in data_lib.make_dataset(data_cfg, split, batch_size, train=False):
        # Replicated outputs hold every process's rows; the masks say which are real.
        valid = parallel.gather_batch(batch["mask"]) > 0
        images = parallel.to_global(batch["image"], mesh)
        codes.append(np.asarray(jax.device_get(encode(weights, images)))[valid])
        labels.append(parallel.gather_batch(batch["label"])[valid])
        if flip:
            mirrored = parallel.to_global(batch["image"][:, :, ::-1], mesh)
            flipped_codes.append(np.asarray(jax.device_get(encode(weights, mirrored)))[valid])
        if 0 < limit <= sum(len(c) for c in codes):
            break
    codes, labels = np.concatenate(codes), np.concatenate(labels)
    if limit > 0:
        codes, labels = codes[:limit], labels[:limit]
        flipped_codes = [np.concatenate(flipped_codes)[:limit]] if flip else []
    if flip:
        codes, labels = np.concatenate([codes, np.concatenate(flipped_codes)]), np.concatenate([labels, labels])
    if latents:
        return {"latents": codes.astype(np.float32), "labels": labels.astype(np.int32)}
    dtype = np.uint16 if tokenizer.num_codes <= 2 ** 16 else np.int32
    return {"codes": codes.astype(dtype), "labels": labels.astype(np.int32)}


def cache_path(workdir: str, split: str, flip: bool, latents: bool = False) -> str:
    folder = "latents" if latents else "tokens"
    return os.fspath(paths.join(workdir, folder, f"{split}{'_flip' if flip else ''}.npz"))


def _save(path: str, arrays: dict, description: dict) -> None:
    with paths.atomic_writer(path) as f:  # a killed encoding leaves no half-written cache
        np.savez(f, **arrays, description=np.asarray(json.dumps(description, sort_keys=True)))


def _load(path: str, description: dict, num_codes: int, latents: bool = False) -> dict:
    remedy = ("delete it (and the checkpoints trained on it) to encode the split again, or train this "
              "prior in a new --workdir")
    try:
        # allow_pickle=False (numpy's default, said here): loading a cache never runs code from it.
        with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as saved:
            made_by = json.loads(str(saved["description"]))
            arrays = {_key(latents): saved[_key(latents)], "labels": saved["labels"]}
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as err:
        raise ValueError(f"The cached code maps {path} cannot be read ({type(err).__name__}: {err}); it is "
                         f"truncated or not a vqjax cache: {remedy}.") from None
    # A setting the cache does not record is one that vqjax added since it was written: not a change.
    changed = sorted(k for k in made_by if made_by[k] != description.get(k))
    if changed:
        raise ValueError(
            f"The cached code maps {path} were made with other settings ({', '.join(changed)}: "
            f"{[made_by.get(k) for k in changed]} there, {[description.get(k) for k in changed]} now); "
            "train this prior in a new --workdir (or delete the tokens/ folder and the "
            "checkpoints that were trained on them).")
    if latents:
        if not np.all(np.isfinite(arrays["latents"])):
            raise ValueError(f"The cached latents {path} hold non-finite values: {remedy}.")
        return arrays
    codes = arrays["codes"]
    if codes.size and (codes.min() < 0 or codes.max() >= num_codes):
        raise ValueError(f"The cached code maps {path} hold codes outside 0..{num_codes - 1} (min {codes.min()}, "
                         f"max {codes.max()}) although the tokenizer has {num_codes} codes: {remedy}.")
    return arrays


def cached_codes(workdir: str, tokenizer, tokenizer_dir: str, data_cfg, split: str, *, flip: bool,
                 batch_size: int, mesh, limit: int = 0, latents: bool = False) -> dict:
    """The code maps (`latents`: the latents) of `split`, read from the workdir's cache, or
    encoded and cached."""
    path = cache_path(workdir, split, flip, latents)
    description = describe(tokenizer, tokenizer_dir, data_cfg, split, flip, limit)
    cached = paths.exists(path)
    if jax.process_count() > 1:
        # Every process takes process 0's branch: encoding runs collectives over all of them,
        # so one that loads while the others encode would leave them waiting.
        cached = bool(multihost_utils.broadcast_one_to_all(np.int32(cached)))
        if cached and not paths.exists(path):
            raise FileNotFoundError(
                f"Process 0 found the cached code maps {path} but process {jax.process_index()} does "
                "not: --workdir must be storage that every host shares (a gs:// bucket, NFS).")
    if cached:
        return _load(path, description, tokenizer.num_codes, latents)
    arrays = encode_split(tokenizer, data_cfg, split, flip=flip, batch_size=batch_size, mesh=mesh, limit=limit,
                          latents=latents)
    if jax.process_index() == 0:
        _save(path, arrays, description)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"{_key(latents)} of {split} cached")  # written before anyone goes on
    return arrays


# ----------------------------------------------------------------------------------------
# Batches.


def batches(arrays: dict, batch_size: int, *, seed: int, start_step: int = 0) -> Iterator[dict]:
    """Endless host-local training batches {'tokens': int32 [b, h*w], 'label': [b]} (of a
    latent cache: {'latents': [b, h, w, D], 'label'}).

    The stream is the concatenation of per-epoch permutations (seeded by (seed, epoch)); batch s
    is its slice [s * B, (s + 1) * B), so resuming at `start_step` needs no replay. Each process
    takes its contiguous part of every global batch.
    """
    count = len(arrays["labels"])
    local = data_lib.local_batch_size(batch_size, jax.process_count())
    offset = jax.process_index() * local
    rows_of = _rows_of(arrays)
    permutations = {}  # the epochs the current batch spans (at most a few)

    def permutation(epoch: int) -> np.ndarray:
        if epoch not in permutations:
            if len(permutations) > 2:
                permutations.pop(min(permutations))
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(count)
        return permutations[epoch]

    step = start_step
    while True:
        positions = step * batch_size + offset + np.arange(local)
        epochs = positions // count
        rows = np.empty(local, np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            rows[here] = permutation(int(epoch))[positions[here] % count]
        yield {**rows_of(rows), "label": arrays["labels"][rows]}
        step += 1


def _rows_of(arrays: dict):
    """rows -> {'tokens': int32 [b, h*w]} of a code cache or {'latents': [b, h, w, D]}."""
    if "latents" in arrays:
        return lambda rows: {"latents": arrays["latents"][rows]}
    codes = arrays["codes"].reshape(len(arrays["labels"]), -1)
    return lambda rows: {"tokens": codes[rows].astype(np.int32)}


def first_global_batch(arrays: dict, batch_size: int, *, seed: int) -> dict:
    """The rows of the stream's first global batch, the same on every process (each holds the
    whole cache): e.g. for a statistic that must not depend on the process layout."""
    rows = np.random.default_rng([seed, 0]).permutation(len(arrays["labels"]))[:batch_size]
    return {**_rows_of(arrays)(rows), "label": arrays["labels"][rows]}


def eval_batches(arrays: dict, batch_size: int, num_batches: int = -1) -> Iterator[dict]:
    """One pass in order, padded to whole batches ({'tokens', 'label', 'mask'}); every process
    gets the same number of batches."""
    count = len(arrays["labels"])
    local = data_lib.local_batch_size(batch_size, jax.process_count())
    rows_of = _rows_of(arrays)
    total = -(-count // batch_size)
    total = total if num_batches < 0 else min(total, num_batches)
    for i in range(total):
        rows = i * batch_size + jax.process_index() * local + np.arange(local)
        valid = rows < count
        rows = np.where(valid, rows, 0)
        yield {**rows_of(rows), "label": arrays["labels"][rows], "mask": valid.astype(np.float32)}
