"""The FID InceptionV3 against pytorch-fid's, weights through the converter.

No download is possible, so pytorch-fid's network is built with random weights in place of
`pt_inception-2015-12-05-6726825d.pth`. Random batch-norm affine terms, and running statistics
calibrated on one batch, keep every layer's activations near unit scale, so the comparison pins
the architecture, the FID-specific pools, the resize and the conversion as the real weights would.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import calibrated_fid_inception
from vqjax import convert
from vqjax.convert.inception import inception_variables_from_torch
from vqjax.nets import inception

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_fid")


def _images(seed, height, width, batch=2):
    """NHWC in [-1, 1], vqjax's convention."""
    return np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, 3)).astype(np.float32)


def _to_torch(images):
    # pytorch-fid takes NCHW in [0, 1] and maps it back to [-1, 1] after the resize.
    return torch.from_numpy((images.transpose(0, 3, 1, 2) + 1) / 2)


def _calibration_images():
    # Images like the tested ones (upsampled and shrunk noise): statistics of unrelated images
    # would leave the activations of the tested ones far from unit scale.
    resize = functools.partial(torch.nn.functional.interpolate, size=(299, 299), mode="bilinear",
                               align_corners=False)
    return torch.cat([resize(_to_torch(_images(1, 64, 80))), resize(_to_torch(_images(2, 320, 300)))])


@pytest.fixture(scope="module")
def reference():
    """pytorch-fid's InceptionV3(output_blocks=[3]) and the Inception3 under it (which holds `fc`)."""
    return calibrated_fid_inception(0, _calibration_images())


@pytest.fixture(scope="module")
def weights_file(reference, tmp_path_factory):
    """The real conversion path: the Inception3 state dict (the layout of pytorch-fid's .pth) in,
    a weights file out, through the CLI."""
    directory = tmp_path_factory.mktemp("inception")
    torch.save(reference[1].state_dict(), directory / "pt_inception.pth")
    out = directory / "inception.msgpack"
    convert.main(["inception", "--pth", str(directory / "pt_inception.pth"), "--out", str(out)])
    return out


@functools.cache
def _forward():
    return jax.jit(inception.InceptionV3().apply)


def _reference_outputs(reference, images):
    model, net = reference
    with torch.no_grad():
        (pool,) = model(_to_torch(images))
        pool = pool.flatten(1)
        return pool.numpy(), net.fc(pool).numpy()


# 64x80 is upsampled (and not square); 320x300 is shrunk, where a resize with antialiasing would
# differ from torch's F.interpolate.
@pytest.mark.parametrize("height,width", [(64, 80), (320, 300)])
def test_features_and_logits_equal_pytorch_fid(reference, weights_file, height, width):
    images = _images(height * width, height, width)
    variables = inception.load_variables(str(weights_file))
    out = _forward()(variables, jnp.asarray(images))
    assert out.pool.shape == (2, 2048) and out.pool.dtype == jnp.float32
    assert out.logits.shape == (2, 1008) and out.logits.dtype == jnp.float32
    pool, logits = _reference_outputs(reference, images)
    # float32 in another summation order: ~3e-7 of the scale after the first convolution, then
    # amplified ~1.6x per Inception block, as a random network with calibrated batch norm is
    # chaotic, to ~1e-4 at Mixed_7c (measured up to 9e-5 of the largest feature). A mistake in a
    # pool, a padding or an epsilon moves the features by 1e-2 or more, so 1e-3 of the scale
    # keeps a 10x margin over rounding and still catches every such mistake.
    for ours, theirs in ((out.pool, pool), (out.logits, logits)):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-3 * np.abs(theirs).max())


def test_resize_equals_torch_interpolate():
    """Half-pixel bilinear without antialiasing, growing and shrinking each axis."""
    images = _images(1, 320, 150)
    ours = np.asarray(inception.resize_to_inception(jnp.asarray(images)))
    theirs = torch.nn.functional.interpolate(torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299),
                                             mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=1e-6)


def test_wrong_state_dicts_name_the_tensor(reference):
    state = {k: v.numpy() for k, v in reference[1].state_dict().items()}
    del state["Mixed_6c.branch7x7dbl_3.bn.running_var"]
    with pytest.raises(ValueError, match=r"--pth has no tensor Mixed_6c.branch7x7dbl_3.bn.running_var "):
        inception_variables_from_torch(state)
    state = {k: v.numpy() for k, v in reference[1].state_dict().items()}
    state["fc.weight"] = state["fc.weight"][:1000]  # torchvision's ImageNet head, not the FID graph's
    with pytest.raises(ValueError, match=r"tensor fc.weight has shape \(1000, 2048\), expected \(1008, 2048\)"):
        inception_variables_from_torch(state)
    wrapper_layout = {k: v.numpy() for k, v in reference[0].state_dict().items()}  # blocks.0.0.conv...
    with pytest.raises(ValueError, match=r"no tensor Conv2d_1a_3x3\."):
        inception_variables_from_torch(wrapper_layout)


def test_wrong_weights_files_are_sentences(tmp_path, weights_file):
    with pytest.raises(ValueError, match="the path is empty; make one from pytorch-fid's weights"):
        inception.load_variables("")
    with pytest.raises(ValueError, match="is not a file; make one"):
        inception.load_variables(str(tmp_path / "absent.msgpack"))
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not msgpack at all")
    with pytest.raises(ValueError, match="not an InceptionV3 weights file"):
        inception.load_variables(str(bad))
    variables = inception.load_variables(str(weights_file))
    variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"] = jnp.ones(10)
    convert.save_params(variables, str(tmp_path / "short.msgpack"))
    with pytest.raises(ValueError, match=r"Mixed_7c/branch_pool/bn/var is \(10,\), expected \(192,\)"):
        inception.load_variables(str(tmp_path / "short.msgpack"))
