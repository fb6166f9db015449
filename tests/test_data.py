"""Input pipelines: values, order, sharding, resumption and error messages."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vqjax.data import images as data


def _cfg(**overrides):
    cfg = ml_collections.ConfigDict(dict(
        source="embedded", name="", path="", data_dir="", train_split="train", eval_split="test",
        image_size=32, channels=3, crop="random", random_flip=True, batch_size=8,
        eval_batch_size=8, shuffle_buffer=1000, num_threads=1, seed=0))
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ with two classes of 8x8 PNGs (5 + 4 images), test/ flat with 3 JPEGs."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    pixels = {}
    for cls, count in (("cat", 5), ("dog", 4)):
        os.makedirs(root / "train" / cls)
        for i in range(count):
            image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            path = str(root / "train" / cls / f"{i}.png")
            Image.fromarray(image).save(path)
            pixels[path] = image
    os.makedirs(root / "test")
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)).save(root / "test" / f"{i}.jpg")
    return root, pixels


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_embedded_images_are_real_photo_crops():
    train, labels = data.embedded_images("train", 32)
    test, _ = data.embedded_images("test", 32)
    assert train.shape == (20000, 32, 32, 3) and train.dtype == np.uint8
    assert test.shape == (2000, 32, 32, 3)
    assert set(np.unique(labels)) == set(range(len(data.EMBEDDED_PHOTOS)))
    assert train.std() > 20  # photographs, not constant or blank tiles
    again, _ = data.embedded_images.__wrapped__("train", 32)
    np.testing.assert_array_equal(again, train)


def test_embedded_batches_range_and_shape():
    batch = next(data.make_dataset(_cfg(), "train"))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32


def test_folder_values_labels_and_eval_padding(image_folder):
    root, pixels = image_folder
    cfg = _cfg(source="folder", path=str(root), image_size=8, crop="center", random_flip=False, batch_size=4)
    files, labels, classes = data.list_image_folder(str(root), "train")
    assert classes == ("cat", "dog") and list(labels) == [0] * 5 + [1] * 4
    batches = list(data.make_dataset(cfg, "train", train=False))
    assert len(batches) == 3  # 9 images in batches of 4, the last padded
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 0, 0, 0])
    images = np.concatenate([b["image"] for b in batches])[:9]
    expected = np.stack([pixels[f] for f in files]).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(images, expected, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:9], labels)


def test_folder_flat_split_resized(image_folder):
    root, _ = image_folder
    cfg = _cfg(source="folder", path=str(root), image_size=6, crop="resize", batch_size=2)
    batches = list(data.make_dataset(cfg, "test"))
    assert [b["image"].shape for b in batches] == [(2, 6, 6, 3)] * 2
    assert batches[1]["mask"].tolist() == [1.0, 0.0]


def test_training_order_is_deterministic_and_resumable():
    cfg = _cfg()
    first = _take(data.make_dataset(cfg, "train"), 5)
    again = _take(data.make_dataset(cfg, "train"), 5)
    resumed = _take(data.make_dataset(cfg, "train", start_step=3), 2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(first[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    other_seed = next(data.make_dataset(_cfg(seed=1), "train"))
    assert not np.array_equal(other_seed["image"], first[0]["image"])


def test_a_resume_far_into_training_reads_nothing_before_it(image_folder):
    """Step 10^12 of a folder's stream (10^12 x 3 images in) is computed, not reached by
    skipping: it comes at once, and it is the batch that its epoch's permutation puts there."""
    root, pixels = image_folder
    cfg = _cfg(source="folder", path=str(root), image_size=8, crop="center", random_flip=False, batch_size=3)
    step = 10 ** 12
    batch = next(data.make_dataset(cfg, "train", start_step=step))
    # Global position 3 * 10^12 is record 3 of its epoch (3 batches of 3 per epoch of 9 images).
    offset = (3 * step) % 9
    epoch = _take(data.make_dataset(cfg, "train", start_step=step - offset // 3), 3)
    np.testing.assert_array_equal(batch["image"], epoch[offset // 3]["image"])
    expected = sorted((image.astype(np.float32) / 127.5 - 1).tobytes() for image in pixels.values())
    assert sorted(x.tobytes() for b in epoch for x in b["image"]) == expected  # each image once


def test_epochs_reshuffle_and_cover_the_data(image_folder):
    root, _ = image_folder
    cfg = _cfg(source="folder", path=str(root), image_size=8, crop="center", random_flip=False, batch_size=3)
    epoch_batches = _take(data.make_dataset(cfg, "train"), 6)  # two epochs of 9 images
    first = np.concatenate([b["image"] for b in epoch_batches[:3]])
    second = np.concatenate([b["image"] for b in epoch_batches[3:]])
    key = lambda images: sorted(x.tobytes() for x in images)
    assert key(first) == key(second)  # each epoch sees every image once
    assert not np.array_equal(first, second)  # in a new order


def test_processes_split_the_single_process_global_batches(image_folder):
    """Two processes' training batches, side by side, are the one-process run's batches: the
    data does not depend on how many hosts read it (multi-host runs equal single-host ones)."""
    root, _ = image_folder
    cfg = _cfg(source="folder", path=str(root), image_size=8, crop="center", batch_size=4)
    single = _take(data.make_dataset(cfg, "train", start_step=1, process_index=0, process_count=1), 4)
    halves = [_take(data.make_dataset(cfg, "train", start_step=1, process_index=i, process_count=2), 4)
              for i in range(2)]
    for step, batch in enumerate(single):
        for key in ("image", "label"):
            np.testing.assert_array_equal(batch[key], np.concatenate([halves[0][step][key], halves[1][step][key]]))


def test_evaluation_passes_split_the_single_process_batches(image_folder):
    """9 images in global batches of 4 over 2 processes: each process gets the same number of
    batches, and side by side they are the one-process pass, padding included."""
    root, _ = image_folder
    cfg = _cfg(source="folder", path=str(root), image_size=8, crop="center", batch_size=4)
    single = list(data.make_dataset(cfg, "train", train=False, process_index=0, process_count=1))
    shards = [list(data.make_dataset(cfg, "train", train=False, process_index=i, process_count=2)) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single) == 3
    for step, batch in enumerate(single):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(batch[key], np.concatenate([shards[0][step][key], shards[1][step][key]]))


@pytest.fixture(scope="module")
def tfds_datasets(tmp_path_factory):
    """The same 9 labelled 8x8 images as a TFDS dataset in each file format: {format: data_dir}."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(9, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(9) % 3
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=3)})
    data_dirs = {}
    for file_format in ("array_record", "tfrecord"):
        data_dirs[file_format] = str(tmp_path_factory.mktemp(file_format))
        split = lambda: tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
        tfds.dataset_builders.store_as_tfds_dataset(
            name="tiny_images", version="1.0.0", features=features, data_dir=data_dirs[file_format],
            split_datasets={"train": split(), "test": split()}, file_format=file_format,
            disable_shuffling=True)  # records stay in the order written
    return data_dirs, images, labels


def _tfds_cfg(data_dir, **overrides):
    return _cfg(source="tfds", name="tiny_images", data_dir=data_dir, image_size=8, crop="center",
                random_flip=False, batch_size=3, **overrides)


def test_tfds_array_record_resume_far_into_training_reads_nothing_before_it(tfds_datasets):
    """ArrayRecord is read by record number, like a folder: step 10^12 comes at once, it is the
    batch its epoch's permutation puts there, and every epoch holds each record once."""
    data_dirs, images, labels = tfds_datasets
    cfg = _tfds_cfg(data_dirs["array_record"])
    step = 10 ** 12
    batch = next(data.make_dataset(cfg, "train", start_step=step))
    offset = (3 * step) % 9
    epoch = _take(data.make_dataset(cfg, "train", start_step=step - offset // 3), 3)
    np.testing.assert_array_equal(batch["image"], epoch[offset // 3]["image"])
    np.testing.assert_array_equal(batch["label"], epoch[offset // 3]["label"])
    seen = sorted((x.tobytes(), int(y)) for b in epoch for x, y in zip(b["image"], b["label"]))
    stored = sorted(((x.astype(np.float32) / 127.5 - 1).tobytes(), int(y)) for x, y in zip(images, labels))
    assert seen == stored


def test_tfds_evaluation_pass_is_the_split_in_order(tfds_datasets):
    data_dirs, images, labels = tfds_datasets
    for data_dir in data_dirs.values():
        batches = list(data.make_dataset(_tfds_cfg(data_dir), "test", batch_size=4))
        assert [b["mask"].tolist() for b in batches][-1] == [1, 0, 0, 0]
        got = np.concatenate([b["image"] for b in batches])[:9]
        np.testing.assert_array_equal(got, images.astype(np.float32) / 127.5 - 1)
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:9], labels)


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_resumed_stream_is_the_uninterrupted_one(tfds_datasets, file_format):
    data_dirs, _, _ = tfds_datasets
    cfg = _tfds_cfg(data_dirs[file_format])
    uninterrupted = _take(data.make_dataset(cfg, "train"), 8)
    resumed = _take(data.make_dataset(cfg, "train", start_step=5), 3)
    for a, b in zip(uninterrupted[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    halves = [_take(data.make_dataset(cfg, "train", start_step=5, process_index=i, process_count=3), 3)
              for i in range(3)]
    for step, batch in enumerate(resumed):
        np.testing.assert_array_equal(batch["image"], np.concatenate([h[step]["image"] for h in halves]))


def test_missing_folder_is_one_sentence(tmp_path):
    with pytest.raises(data.DatasetError, match="config.data.path"):
        data.make_dataset(_cfg(source="folder", path=str(tmp_path / "nowhere")), "train")


def test_empty_folder_is_one_sentence(tmp_path):
    os.makedirs(tmp_path / "train" / "cls")
    with pytest.raises(data.DatasetError, match="no images"):
        data.make_dataset(_cfg(source="folder", path=str(tmp_path)), "train")


def test_an_unreadable_image_is_named_or_skipped(image_folder, tmp_path):
    """A truncated file among good ones: training and evaluation name it (not a TensorFlow node),
    and `skip_unreadable` trains on the others."""
    import shutil

    root, pixels = image_folder
    shutil.copytree(root, tmp_path / "data")
    broken = tmp_path / "data" / "train" / "dog" / "2.png"
    broken.write_bytes(broken.read_bytes()[:40])
    cfg = _cfg(source="folder", path=str(tmp_path / "data"), image_size=8, crop="center", random_flip=False,
               batch_size=3)
    for split, train in (("train", True), ("train", False)):
        with pytest.raises(data.DatasetError, match=rf"Could not decode {broken} of the image folder .* \(.*\); "
                                                     r"remove or re-encode it, or set config.data.skip_unreadable"):
            _take(data.make_dataset(cfg, split, train=train, start_step=3), 3)  # one epoch
    cfg.skip_unreadable = True
    seen = np.concatenate([b["image"] for b in _take(data.make_dataset(cfg, "train"), 8)])  # 24 of 8 good images
    good = {(image.astype(np.float32) / 127.5 - 1).tobytes() for path, image in pixels.items()
            if not path.endswith("dog/2.png")}
    assert {x.tobytes() for x in seen} == good


def test_unprepared_tfds_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetError, match="tfds build mnist"):
        data.make_dataset(_cfg(source="tfds", name="mnist", data_dir=str(tmp_path)), "train")


def test_unknown_source_and_bad_batch():
    with pytest.raises(data.DatasetError, match="config.data.source"):
        data.make_dataset(_cfg(source="s3"), "train")
    with pytest.raises(data.DatasetError, match="not divisible"):
        data.make_dataset(_cfg(batch_size=9), "train", process_count=2, process_index=0)
