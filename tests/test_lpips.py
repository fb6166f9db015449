"""LPIPS against the `lpips` package (richzhang/PerceptualSimilarity), weights through the converter.

The package ships its v0.1 linear heads; the VGG16 trunk is random here (`pnet_rand=True`, as no
download is possible), which pins the architecture, the scaling layer, the normalisation and
the reductions just as well as ImageNet weights would.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import convert
from vqjax.nets import lpips

torch = pytest.importorskip("torch")
lpips_torch = pytest.importorskip("lpips")


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return lpips_torch.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()


@pytest.fixture(scope="module")
def weights_file(reference, tmp_path_factory):
    """The real conversion path: .pth files in, a weights file out, through the CLI."""
    directory = tmp_path_factory.mktemp("lpips")
    vgg_state = {k.replace("net.", "", 1): v for k, v in reference.state_dict().items() if k.startswith("net.")}
    # Re-index as torchvision's `features.{i}` (the layout of vgg16-397923af.pth).
    vgg_state = {"features." + k.split(".", 1)[1]: v for k, v in vgg_state.items()}
    torch.save(vgg_state, directory / "vgg16.pth")
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("lin")}, directory / "vgg.pth")
    out = directory / "lpips.msgpack"
    convert.main(["lpips", "--vgg", str(directory / "vgg16.pth"), "--lin", str(directory / "vgg.pth"),
                  "--out", str(out)])
    return out


def _distances(reference, x, y):
    with torch.no_grad():
        d = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(y.transpose(0, 3, 1, 2)))
    return d.numpy().reshape(-1)


@pytest.mark.parametrize("size", [64, 37])  # 37: odd sizes floor at every max-pool, as torch does
def test_distances_equal_the_lpips_package(reference, weights_file, size):
    rng = np.random.default_rng(size)
    x = rng.uniform(-1, 1, size=(3, size, size, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(scale=0.3, size=x.shape), -1, 1).astype(np.float32)
    params = lpips.load_params(str(weights_file))
    ours = np.asarray(lpips.LPIPS().apply({"params": params}, jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(ours, _distances(reference, x, y), rtol=1e-4, atol=1e-6)
    same = lpips.LPIPS().apply({"params": params}, jnp.asarray(x), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-6)


@pytest.mark.extended
def test_loss_gradient_equals_the_lpips_package(reference, weights_file):
    """The gradient of the loss with respect to the reconstruction, at 32x32 (VGG's last stage on
    2x2 maps, vqjax.nets.conv's patches path), against PyTorch's autograd of the package."""
    import jax  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(scale=0.3, size=x.shape), -1, 1).astype(np.float32)
    params = lpips.load_params(str(weights_file))
    loss = lambda y: jnp.sum(lpips.LPIPS().apply({"params": params}, jnp.asarray(x), y))  # noqa: E731
    ours = np.asarray(jax.grad(loss)(jnp.asarray(y)))
    target = torch.from_numpy(y.transpose(0, 3, 1, 2)).requires_grad_(True)
    reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), target).sum().backward()
    theirs = target.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * np.abs(theirs).max())


def test_lpips_module_layout_converts_too(reference):
    """A saved lpips.LPIPS state dict (`net.slice*`) is accepted as the VGG source."""
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params = convert.lpips_params_from_torch(state, state)
    np.testing.assert_array_equal(params["vgg"]["conv3_2"]["kernel"],
                                  state["net.slice3.12.weight"].transpose(2, 3, 1, 0))


def test_wrong_weights_files_are_sentences(tmp_path, weights_file):
    with pytest.raises(ValueError, match="lpips_path is empty"):
        lpips.load_params("")
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not msgpack at all")
    with pytest.raises(ValueError, match="not an LPIPS weights file"):
        lpips.load_params(str(bad))
    params = lpips.load_params(str(weights_file))
    params["lin_2"]["kernel"] = params["lin_2"]["kernel"][..., :10, :]
    convert.save_params(params, str(tmp_path / "short.msgpack"))
    with pytest.raises(ValueError, match=r"lin_2/kernel is \(1, 1, 10, 1\), expected \(1, 1, 256, 1\)"):
        lpips.load_params(str(tmp_path / "short.msgpack"))
    with pytest.raises(ValueError, match="--vgg has no tensor 'features.0.weight'"):
        convert.lpips_params_from_torch({}, {})
