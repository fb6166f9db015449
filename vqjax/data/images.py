"""Input pipelines: TFDS datasets, folders of images, and an embedded offline dataset.

`make_dataset(cfg, split)` is the one entry point for every source. It yields host-local
numpy batches `{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}` where
b = global batch / process count; evaluation batches also carry `mask` (1 for real
examples, 0 for padding) so that every process sees the same number of static-shape batches.

Training order is a pure function of (seed, step), whatever the number of processes: one global
stream of records, each process decodes its rows of every global batch, and augmentations use
stateless ops keyed by the record's global position. Image folders, the embedded dataset and
TFDS datasets prepared as ArrayRecord (`tfds build --file_format=array_record`) are read by
record number: epoch e visits them in a permutation keyed by (seed, e)
(`tf.random.experimental.index_shuffle`), so a run resumed at step k computes which records
come next and reads nothing before them. TFDS' TFRecord shards can only be read in order: they
are shuffled through a buffer, and a resumed run skips k global batches of undecoded records.

Paths may be local or in a bucket (vqjax.core.paths).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from vqjax.core import paths

# tf.data only feeds the host; it must not take accelerator memory from JAX.
tf.config.set_visible_devices([], "GPU")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# Photographs shipped inside scikit-image (no download). Crops come from the left 80% of each
# photograph for training and from the right 20% for evaluation, so evaluation pixels are
# never seen in training.
EMBEDDED_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
    "hubble_deep_field", "retina", "motorcycle",
)
EMBEDDED_TRAIN_FRACTION = 0.8
EMBEDDED_NUM_EXAMPLES = {"train": 20000, "test": 2000}


class DatasetError(ValueError):
    """A dataset that cannot be found or read."""


# ----------------------------------------------------------------------------------------
# Sources.


@dataclasses.dataclass(frozen=True)
class Source:
    """A split's `count` records {'image', 'label'} in a fixed order, and `decode`:
    record['image'] -> uint8 [h, w, c]. Records are either read by number, `lookup`: int64
    index -> record (any position of the training stream is found without reading the others),
    or only in order from `dataset`. `table` holds a table source's arrays (for `lookup`)."""

    count: int
    decode: Callable
    table: Optional[dict] = None
    lookup: Optional[Callable] = None
    dataset: Optional[tf.data.Dataset] = None

    @property
    def random_access(self) -> bool:
        return self.lookup is not None

    def in_order(self) -> tf.data.Dataset:
        if self.dataset is not None:
            return self.dataset
        return tf.data.Dataset.range(self.count).map(self.lookup)


def _table_source(count: int, decode: Callable, table: dict) -> Source:
    tensors = {k: tf.convert_to_tensor(v) for k, v in table.items()}
    return Source(count, decode, table=table,
                  lookup=lambda index: {k: tf.gather(v, index) for k, v in tensors.items()})


def _decode_encoded(channels: int):
    def decode(encoded):
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        image.set_shape([None, None, channels])
        return image

    return decode


def _decode_raw(channels: int):
    def decode(image):
        if image.shape[-1] == channels:
            return image
        if channels == 1:
            return tf.image.rgb_to_grayscale(image)
        return tf.image.grayscale_to_rgb(image)

    return decode


def _load_photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    if name == "motorcycle":
        return skdata.stereo_motorcycle()[0]
    return getattr(skdata, name)()


@functools.lru_cache(maxsize=None)
def embedded_images(split: str, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic `image_size` crops of scikit-image's photographs at half resolution.

    Returns uint8 images `[N, S, S, 3]` and the index of the source photograph as label.
    """
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - pillow comes with scikit-image
        raise DatasetError("The embedded dataset needs pillow; run `pip install pillow`.") from err
    if split not in EMBEDDED_NUM_EXAMPLES:
        raise DatasetError(
            f"The embedded dataset has splits {sorted(EMBEDDED_NUM_EXAMPLES)}, not {split!r}."
        )
    try:
        photos = [_load_photo(name) for name in EMBEDDED_PHOTOS]
    except Exception as err:
        raise DatasetError(
            "The embedded dataset reads the sample photographs that ship with scikit-image, "
            f"and loading them failed ({err}); run `pip install scikit-image`."
        ) from err
    rng = np.random.default_rng(0 if split == "train" else 1)
    count = EMBEDDED_NUM_EXAMPLES[split]
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    labels = rng.integers(0, len(photos), size=count).astype(np.int32)
    for label, photo in enumerate(photos):
        photo = np.asarray(Image.fromarray(photo[..., :3]).reduce(2))
        height, width = photo.shape[:2]
        split_col = int(width * EMBEDDED_TRAIN_FRACTION)
        lo, hi = (0, split_col) if split == "train" else (split_col, width)
        if hi - lo < image_size or height < image_size:
            raise DatasetError(f"Photograph {EMBEDDED_PHOTOS[label]} is too small for {image_size}px crops.")
        for i in np.flatnonzero(labels == label):
            top = rng.integers(0, height - image_size + 1)
            left = rng.integers(lo, hi - image_size + 1)
            images[i] = photo[top : top + image_size, left : left + image_size]
    return images, labels


def _embedded_source(cfg, split):
    images, labels = embedded_images(split, cfg.image_size)
    return _table_source(len(images), _decode_raw(cfg.channels), {"image": images, "label": labels})


@functools.lru_cache(maxsize=None)
def list_image_folder(path: str, split: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """Image files under `path/split`, sorted, labelled by class sub-folder (ImageFolder layout)."""
    root = paths.join(path, split)
    if not root.is_dir():
        raise DatasetError(
            f"No folder {os.fspath(root)!r}: an image-folder dataset needs {path}/{split}/ holding "
            "images (or one sub-folder of images per class); set config.data.path to its parent."
        )
    entries = sorted(root.iterdir(), key=os.fspath)
    class_dirs = [e for e in entries if e.is_dir()]
    files, labels = [], []
    if class_dirs:
        for label, class_dir in enumerate(class_dirs):
            found = [f for f in paths.list_files(class_dir) if f.name.lower().endswith(IMAGE_EXTENSIONS)]
            files += found
            labels += [label] * len(found)
    else:
        files = [e for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)]
        labels = [0] * len(files)
    if not files:
        raise DatasetError(
            f"Found no images ({', '.join(IMAGE_EXTENSIONS)}) under {os.fspath(root)!r}; put the "
            f"{split} images there, directly or in one sub-folder per class."
        )
    return tuple(map(os.fspath, files)), tuple(labels), tuple(d.name for d in class_dirs)


def _read_file(filename):
    """A file's bytes in a tf.data map: TensorFlow reads local files itself (in parallel,
    without Python); a bucket's objects come through the path layer."""
    return tf.numpy_function(lambda name: paths.read_bytes(name.decode()), [filename], tf.string,
                             stateful=False)


def _folder_source(cfg, split):
    if not cfg.path:
        raise DatasetError("config.data.source='folder' needs config.data.path, the folder holding train/ and test/.")
    files, labels, _ = list_image_folder(cfg.path, split)
    decode_bytes = _decode_encoded(cfg.channels)
    read = _read_file if paths.is_uri(cfg.path) else tf.io.read_file
    table = {"image": np.asarray(files), "label": np.asarray(labels, np.int32)}
    return _table_source(len(files), lambda filename: decode_bytes(read(filename)), table)


def _tfds_source(cfg, split):
    import tensorflow_datasets as tfds

    data_dir = cfg.data_dir or None
    try:
        builder = tfds.builder(cfg.name, data_dir=data_dir)
    except Exception as err:
        raise DatasetError(f"TFDS has no dataset named {cfg.name!r} ({err}); check config.data.name.") from err
    if not paths.exists(paths.join(builder.data_dir, "dataset_info.json")):
        raise DatasetError(
            f"TFDS dataset {cfg.name!r} is not prepared in {builder.data_dir}; prepare it once "
            f"with `tfds build {cfg.name}` (or `python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{cfg.name}').download_and_prepare()\"`) on a machine with internet, "
            "and point config.data.data_dir at it."
        )
    if split not in builder.info.splits:
        raise DatasetError(
            f"TFDS dataset {cfg.name!r} has splits {sorted(builder.info.splits)}, not {split!r}; "
            "set config.data.train_split / config.data.eval_split."
        )
    has_label = "label" in builder.info.features
    count = builder.info.splits[split].num_examples
    decode = _decode_encoded(cfg.channels)
    if builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        records = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        return Source(count, decode, lookup=_array_record_lookup(records, has_label))
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1),
    )
    ds = ds.map(lambda r: {"image": r["image"], "label": tf.cast(r["label"], tf.int32) if has_label else 0})
    return Source(count, decode, dataset=ds)


def _array_record_lookup(records, has_label: bool) -> Callable:
    """index -> {'image': encoded bytes, 'label'} from a TFDS ArrayRecord data source (random
    access by record number, on local disks and in buckets alike)."""

    def read(index):
        record = records[int(index)]
        return record["image"], np.int32(record["label"] if has_label else 0)

    def lookup(index):
        image, label = tf.numpy_function(read, [index], (tf.string, tf.int32), stateful=False)
        return {"image": tf.reshape(image, []), "label": tf.reshape(label, [])}

    return lookup


SOURCES = {"embedded": _embedded_source, "folder": _folder_source, "tfds": _tfds_source}


def check_split(cfg, split: str) -> int:
    """The number of records of `split`, or the DatasetError a pipeline over it would raise:
    for runs to find a missing or empty split before step 1, not at their first evaluation."""
    return _source(cfg, split).count


def _source(cfg, split):
    if cfg.source not in SOURCES:
        raise DatasetError(
            f"config.data.source is {cfg.source!r}; it must be one of {sorted(SOURCES)}."
        )
    return SOURCES[cfg.source](cfg, split)


# ----------------------------------------------------------------------------------------
# Preprocessing.


def _resize_and_crop(image, size: int, crop: str, seed=None):
    """Resize (shorter side to `size` for crops), then crop to `size` x `size`."""
    if crop == "resize":
        return tf.image.resize(image, (size, size), antialias=True)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    scale = size / tf.cast(tf.minimum(height, width), tf.float32)
    new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32))
    new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32))
    image = tf.cond(
        tf.logical_and(tf.equal(new_h, height), tf.equal(new_w, width)),
        lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, (new_h, new_w), antialias=True),
    )
    if crop == "random" and seed is not None:
        return tf.image.stateless_random_crop(image, (size, size, image.shape[-1]), seed=seed)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top : top + size, left : left + size]


def _preprocess(cfg, decode, train: bool, seed: int):
    if cfg.crop not in ("resize", "center", "random"):
        raise DatasetError(f"config.data.crop is {cfg.crop!r}; use 'resize', 'center' or 'random'.")

    def fn(index, record):
        image = decode(record["image"])
        element_seed = tf.stack([tf.cast(seed, tf.int64), index])
        crop_seed, flip_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, num=2)
        )
        crop = cfg.crop if train else ("center" if cfg.crop == "random" else cfg.crop)
        image = _resize_and_crop(image, cfg.image_size, crop, crop_seed)
        if train and cfg.random_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        image = tf.clip_by_value(image, -1.0, 1.0)
        image.set_shape([cfg.image_size, cfg.image_size, cfg.channels])
        return {"image": image, "label": tf.cast(record["label"], tf.int32)}

    return fn


def local_batch_size(batch_size: int, process_count: int) -> int:
    if batch_size % process_count:
        raise DatasetError(
            f"The global batch size {batch_size} is not divisible by the {process_count} "
            "processes; choose a multiple."
        )
    return batch_size // process_count


def _tf_error_text(err: tf.errors.OpError) -> str:
    """TensorFlow's message without its graph-node names."""
    text = re.sub(r"\{\{[^}]*\}\}|\[\[.*?\]\]", "", err.message.splitlines()[0])
    return re.sub(r"\s+", " ", text).strip(" :;")


def _unreadable(files: list, channels: int) -> list:
    """The files of `files` (a failing batch's) that do not decode."""
    bad = []
    for name in files:
        try:
            tf.io.decode_image(tf.constant(paths.read_bytes(name)), channels=channels, expand_animations=False)
        except (tf.errors.OpError, OSError):
            bad.append(name)
    return bad


def _numpy_batches(ds, description: str, batch_files: Optional[Callable[[int], list]] = None,
                   channels: int = 3) -> Iterator[dict]:
    """The batches of `ds` as numpy; an image that cannot be decoded stops them with a sentence
    naming the file (`batch_files(k)`: the files that fill this process's k-th batch)."""
    count = 0
    try:
        for batch in ds.as_numpy_iterator():
            yield batch
            count += 1
    except tf.errors.InvalidArgumentError as err:
        bad = _unreadable(batch_files(count), channels) if batch_files else []
        which = f"{', '.join(bad[:3])}{' and others' if len(bad) > 3 else ''} of {description}" if bad \
            else f"an image of {description}"
        raise DatasetError(
            f"Could not decode {which} ({_tf_error_text(err)}); remove or re-encode it, or set "
            "config.data.skip_unreadable=True to train without unreadable images."
        ) from None


def make_dataset(
    cfg,
    split: str,
    batch_size: Optional[int] = None,
    *,
    train: Optional[bool] = None,
    start_step: int = 0,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[dict]:
    """Host-local numpy batches of `split` for `cfg` (a `config.data` section).

    `batch_size` is the global batch (default `cfg.batch_size`). With `train=True` (the default
    for the train split) the stream is infinite, shuffled and augmented, and starts at
    `start_step` batches. Otherwise it is one deterministic pass, padded to whole batches with
    `mask` 0 and of the same length on every process.
    """
    import jax  # only for the process layout; keeps this module usable without devices

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    batch_size = batch_size or cfg.batch_size
    local_batch = local_batch_size(batch_size, process_count)
    train = (split == cfg.train_split) if train is None else train
    seed = int(cfg.seed)
    source = _source(cfg, split)
    description = _describe(cfg, split)

    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = int(cfg.get("num_threads", 0)) or os.cpu_count() or 1

    def own_rows(ds):
        """A process keeps its rows of every global batch (`local_batch` of them from
        `process_index * local_batch`), before anything is read or decoded."""
        if process_count == 1:
            return ds
        return ds.filter(lambda position, *_: (position % batch_size) // local_batch == process_index)

    # One global stream, the same on every process, cut into global batches of which each
    # process decodes its rows. So a step's global batch, each record's augmentation (keyed by
    # its global position) and the order of an evaluation pass do not depend on the number of
    # processes: 2 hosts x 2 devices see what 1 host x 4 devices sees.
    preprocess = _preprocess(cfg, source.decode, train, seed)
    skip_unreadable = bool(cfg.get("skip_unreadable", False))
    files = source.table["image"] if cfg.source == "folder" else None

    def batch_files(k: int) -> list:
        """The files that fill this process's k-th batch: to name an unreadable one."""
        first = ((start_step if train else 0) + k) * batch_size + process_index * local_batch
        positions = range(first, first + local_batch)
        if train:
            return [files[int(_record_index(tf.constant(p, tf.int64), source.count, seed))] for p in positions]
        return [files[p] for p in positions if p < source.count]

    locate = batch_files if files is not None else None

    if train:
        start = start_step * batch_size
        if source.random_access:
            ds = own_rows(tf.data.Dataset.range(start, _ENDLESS)).map(_record_at(source, seed))
        else:
            ds = source.dataset.shuffle(min(int(cfg.shuffle_buffer), source.count), seed=seed,
                                        reshuffle_each_iteration=True).repeat()
            ds = own_rows(ds.enumerate().skip(start))
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        if skip_unreadable:
            ds = ds.ignore_errors(log_warning=True)  # each skipped file is a warning in the log
        ds = ds.batch(local_batch, drop_remainder=True).prefetch(2).with_options(options)
        return _numpy_batches(ds, description, locate, cfg.channels)

    ds = own_rows(source.in_order().enumerate()).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    if skip_unreadable:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(local_batch).prefetch(2).with_options(options)
    num_batches = math.ceil(source.count / batch_size)
    empty = {"image": np.zeros((0, cfg.image_size, cfg.image_size, cfg.channels), np.float32),
             "label": np.zeros((0,), np.int32)}
    return _padded_batches(_numpy_batches(ds, description, locate, cfg.channels), num_batches, local_batch, empty)


_ENDLESS = 2 ** 62  # positions of an endless training stream


def _record_index(position, count: int, seed: int):
    """The record at a global stream position (int64): epoch e = position // count visits the
    records in the permutation keyed by (seed, e), computed for that position alone."""
    epoch, offset = position // count, position % count
    return tf.random.experimental.index_shuffle(offset, seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
                                                max_index=tf.constant(count - 1, tf.int64))


def _record_at(source: Source, seed: int):
    """position -> (position, record) of a random-access source."""

    def fn(position):
        return position, source.lookup(_record_index(position, source.count, seed))

    return fn


def _describe(cfg, split: str) -> str:
    what = {"embedded": "the embedded dataset", "folder": f"the image folder {cfg.path}",
            "tfds": f"the TFDS dataset {cfg.name}"}[cfg.source]
    return f"{what} (split {split!r})"


def _padded_batches(batches: Iterator[dict], num_batches: int, local_batch: int,
                    empty: dict) -> Iterator[dict]:
    """Pads the last batch, then adds all-padding batches, up to `num_batches` batches."""
    for _ in range(num_batches):
        batch = next(batches, None) or empty
        valid = len(batch["label"])
        pad = local_batch - valid
        batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        batch["mask"] = (np.arange(local_batch) < valid).astype(np.float32)
        yield batch
