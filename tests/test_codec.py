"""The codec (vqjax/apps/codec.py): exact round trips to the tokenizer's reconstruction, code
lengths against the priors' likelihoods, and every damaged or mismatched file refused with a
sentence. The priors carry random weights (tests/helpers.py) so that their distributions are
far from uniform and every known code changes them."""

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

import vqjax.pretrained
from tests.helpers import load_config, random_transformer_params
from vqjax.apps import codec as codec_lib, files as files_lib
from vqjax.apps.files import InputError
from vqjax.core import images as images_lib
from vqjax.eval.likelihood import token_nll
from vqjax.inference.prior import Prior
from vqjax.nets import build as nets


@pytest.fixture(scope="module")
def tokenizer(trained_vqgan):
    return vqjax.pretrained.load(trained_vqgan[1])


def _random_prior(tokenizer, kind: str, seed: int) -> Prior:
    config = load_config("prior_quickstart", "gpt,smoke" if kind == "gpt" else "smoke")
    code_shape = tokenizer.code_shape(config_image_size(tokenizer))
    model = nets.build_transformer(num_codes=tokenizer.num_codes, seq_len=math.prod(code_shape), **config.model)
    return Prior(config, model, random_transformer_params(model, seed), tokenizer, code_shape)


def config_image_size(tokenizer) -> int:
    return int(tokenizer.config.data.image_size)


@pytest.fixture(scope="module")
def priors(tokenizer):
    return {"gpt": _random_prior(tokenizer, "gpt", 1), "maskgit": _random_prior(tokenizer, "maskgit", 2)}


def _images(size: int, count: int, seed: int = 0) -> list:
    """Smooth random images (a low-resolution noise field, upsampled), as photographs are."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (count, size // 4 + 1, size // 4 + 1, 3))
    big = low.repeat(4, 1).repeat(4, 2)[:, :size, :size]
    return list(np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8))


def _reconstruction(tokenizer, image: np.ndarray) -> np.ndarray:
    """The tokenizer's own reconstruction of one uint8 image, through its public methods."""
    x = jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0
    return images_lib.to_uint8(tokenizer.reconstruct(x))[0]


def _codec(tokenizer, priors, kind):
    # Batches of 4 code maps: a GPT file decodes in one prior pass per code, each over the batch.
    return codec_lib.Codec(tokenizer, None if kind == "uniform" else priors[kind],
                           steps=3 if kind == "maskgit" else None, batch_size=4)


@pytest.mark.parametrize("kind", ["uniform", "gpt", "maskgit"])
def test_decompressed_images_are_the_tokenizers_reconstructions(tokenizer, priors, kind):
    codec = _codec(tokenizer, priors, kind)
    size = config_image_size(tokenizer)
    # Five images: more than one prior batch (4 rows), each file then decoded alone.
    images = _images(size, 5)
    files = codec.compress(images)
    for image, data in zip(images, files):
        np.testing.assert_array_equal(codec.decompress(data), _reconstruction(tokenizer, image))


@pytest.mark.parametrize("kind", ["uniform", "maskgit"])
def test_other_sizes_are_padded_and_cropped_back(tokenizer, priors, kind):
    codec = _codec(tokenizer, priors, kind)
    size, factor = config_image_size(tokenizer), tokenizer.downsampling_factor
    # 1.5 prior tiles by 0.6 (and sides the factor does not divide): a prior codes a 2 x 1 grid of
    # tiles of the edge-padded image; without one, the image is padded to the factor only.
    image = _images(2 * size, 1, seed=3)[0][: size + size // 2 + 1, : size * 3 // 5]
    multiple = (factor, factor) if kind == "uniform" else (size, size)
    assert codec.pixel_multiple == multiple
    restored = codec.decompress(codec.compress([image])[0])
    pad = [(0, -image.shape[0] % multiple[0]), (0, -image.shape[1] % multiple[1]), (0, 0)]
    assert restored.shape == image.shape
    padded_reconstruction = _reconstruction(tokenizer, np.pad(image, pad, mode="edge"))
    np.testing.assert_array_equal(restored, padded_reconstruction[: image.shape[0], : image.shape[1]])


def test_uniform_codes_cost_log2_of_the_codebook_each(tokenizer):
    codec = codec_lib.Codec(tokenizer)
    image = _images(config_image_size(tokenizer), 1)[0]
    (data, bits), = codec.compress_with_bits([image])
    num_codes = math.prod(tokenizer.code_shape(config_image_size(tokenizer)))
    assert bits == pytest.approx(num_codes * math.log2(tokenizer.num_codes))
    payload_bits = 8 * (len(data) - codec_lib.Header.SIZE)
    assert bits <= payload_bits <= bits + 64  # the range coder's tail: at most two 32-bit words


def test_gpt_code_length_is_the_priors_exact_likelihood(tokenizer, priors):
    prior = priors["gpt"]
    codec = codec_lib.Codec(tokenizer, prior)
    images = _images(config_image_size(tokenizer), 3, seed=5)
    results = codec.compress_with_bits(images)
    for image, (data, bits) in zip(images, results):
        _, indices = tokenizer.encode(jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0)
        tokens = jnp.asarray(indices).reshape(1, -1)
        labels = jnp.full((1,), prior.model.null_label)
        nll = token_nll(prior.model.apply({"params": prior.params}, tokens, labels), tokens)
        assert bits == pytest.approx(float(jnp.sum(nll)) / math.log(2), rel=1e-4)
        payload_bits = 8 * (len(data) - codec_lib.Header.SIZE)
        # constriction's 24-bit integer probabilities and the coder's tail cost a little over -log2 p.
        assert bits <= payload_bits <= 1.01 * bits + 64


def test_maskgit_reveals_the_cosine_schedule():
    # 64 codes, 8 steps: floor(64 cos(pi/2 (s+1)/8)) codes unknown after step s
    # = 62, 59, 53, 45, 35, 24, 12, 0.
    assert codec_lib.reveal_counts(64, 8) == [2, 3, 6, 8, 10, 11, 12, 12]
    for length, steps in [(16, 16), (7, 3), (256, 12), (5, 1)]:
        counts = codec_lib.reveal_counts(length, steps)
        assert len(counts) == steps and sum(counts) == length and min(counts) >= 1
    with pytest.raises(InputError, match="between 1 and 16"):
        codec_lib.reveal_counts(16, 17)


def test_maskgit_order_is_a_permutation_that_spreads_over_the_map():
    order = codec_lib.coding_order(256)
    assert sorted(order.tolist()) == list(range(256))
    first = order[:16]  # the first step's codes cover all four quadrants of the 16 x 16 map
    assert len({(p // 16 // 8, p % 16 // 8) for p in first.tolist()}) == 4


@pytest.fixture(scope="module")
def gpt_file(tokenizer, priors):
    codec = codec_lib.Codec(tokenizer, priors["gpt"])
    return codec, codec.compress(_images(config_image_size(tokenizer), 1, seed=7))[0]


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-3], "truncated"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d + b"\0\0\0\0", "appended"),
    (lambda d: d[:-5] + bytes([d[-5] ^ 0x10]) + d[-4:], "corrupted"),
    (lambda d: d[:12] + bytes([d[12] ^ 1]) + d[13:], "corrupted"),
    (lambda d: b"\x89PNG" + d[4:], "not a file written by `vqjax compress`"),
    (lambda d: d[:4] + bytes([9]) + d[5:], "format version 9"),
])
def test_damaged_files_are_refused_with_a_sentence(gpt_file, damage, message):
    codec, data = gpt_file
    with pytest.raises(InputError, match=message):
        codec.decompress(damage(data), "photo.vqj")


def test_files_of_other_models_are_refused(tokenizer, priors, gpt_file):
    _, data = gpt_file
    other_gpt = codec_lib.Codec(tokenizer, _random_prior(tokenizer, "gpt", 9))
    with pytest.raises(InputError, match="other models"):
        other_gpt.decompress(data, "photo.vqj")
    with pytest.raises(InputError, match="gpt prior, not this uniform one"):
        codec_lib.Codec(tokenizer).decompress(data, "photo.vqj")


def test_compress_and_decompress_commands(tokenizer, trained_vqgan, trained_prior, tmp_path, capsys):
    from vqjax import cli

    size = config_image_size(tokenizer)
    images = _images(size, 2, seed=11)
    inputs = []
    for i, image in enumerate(images):
        inputs.append(str(tmp_path / f"photo{i}.png"))
        files_lib.write_png(inputs[-1], image)
    prior_dir = trained_prior[1]
    cli.main(["compress", "--prior", prior_dir, *inputs, "--out", str(tmp_path / "packed")])
    packed = sorted(os.listdir(tmp_path / "packed"))
    assert packed == ["photo0.vqj", "photo1.vqj"]
    assert "bits per pixel" in capsys.readouterr().out
    cli.main(["decompress", "--prior", prior_dir, *[str(tmp_path / "packed" / p) for p in packed],
              "--out", str(tmp_path / "restored")])
    for i, image in enumerate(images):
        restored = files_lib.read_image(str(tmp_path / "restored" / f"photo{i}.png"))
        np.testing.assert_array_equal(restored, _reconstruction(tokenizer, image))

    # A file compressed with the prior is refused by the tokenizer alone, nothing written.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["decompress", "--tokenizer", trained_vqgan[1], str(tmp_path / "packed" / "photo0.vqj"),
                  "--out", str(tmp_path / "wrong")])
    assert exit_info.value.code == 2
    assert "maskgit prior" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "wrong")
    # A missing image among good ones: one sentence, no file written for the good ones.
    with pytest.raises(SystemExit):
        cli.main(["compress", "--tokenizer", trained_vqgan[1], inputs[0], str(tmp_path / "missing.png"),
                  "--out", str(tmp_path / "partial")])
    assert "No image file at" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "partial")
