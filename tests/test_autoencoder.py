"""The VQGAN autoencoder and PatchGAN discriminator against taming-transformers (PyTorch):
sizes here; outputs with converted weights in test_convert_taming.py."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config
from vqjax.families import vqgan as gan
from vqjax.nets import blocks, build as nets_build
from vqjax.nets.discriminator import NLayerDiscriminator



def _reference(module: str):
    """A PyTorch reference module, or a skip of the test that needs it (not of the whole file:
    the pure-JAX tests here run without PyTorch)."""
    return pytest.importorskip(module)

IMAGENET_F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                    z_channels=256, resolution=256)  # taming's vqgan_imagenet_f16_{1024,16384}, ffhq f16


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _torch_count(module):
    return sum(p.numel() for p in module.parameters())


def _taming_ddconfig(sizes):
    return dict(double_z=False, in_channels=3, out_ch=3, dropout=0.0, **{k: list(v) if isinstance(v, tuple) else v
                                                                          for k, v in sizes.items()})


# taming's published settings, written out from its YAML files (not from our configs):
# (ddconfig, embed_dim, n_embed, disc_num_layers).
TAMING_RELEASES = {
    "vqgan_imagenet_f16_1024": (IMAGENET_F16, 256, 1024, 3),  # configs/imagenet_vqgan.yaml
    "vqgan_imagenet_f16_16384": (IMAGENET_F16, 256, 16384, 2),  # released model.yaml
    "vqgan_ffhq_f16_1024": (IMAGENET_F16, 256, 1024, 3),  # configs/faceshq_vqgan.yaml
}


@functools.lru_cache
def _taming_counts(sizes_items):
    """(encoder, decoder) parameter counts of taming's modules (built once per ddconfig)."""
    sizes = dict(sizes_items)
    taming_model = _reference("taming.modules.diffusionmodules.model")
    return (_torch_count(taming_model.Encoder(**_taming_ddconfig(sizes))),
            _torch_count(taming_model.Decoder(**_taming_ddconfig(sizes))))


@pytest.mark.parametrize("name", sorted(TAMING_RELEASES))
def test_parameter_counts_equal_taming(name):
    sizes, embed_dim, num_codes, disc_layers = TAMING_RELEASES[name]
    encoder_count, decoder_count = _taming_counts(tuple(sizes.items()))
    taming_total = (encoder_count + decoder_count
                    + (sizes["z_channels"] * embed_dim + embed_dim)  # quant_conv
                    + (embed_dim * sizes["z_channels"] + sizes["z_channels"]))  # post_quant_conv
    config = load_config(name)
    model = nets_build.build_autoencoder(**config.model)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))["params"]
    assert _count(params["encoder"]) == encoder_count
    assert _count(params["decoder"]) == decoder_count
    assert _count(params) == taming_total
    # taming's quantizer holds only the codebook; ours is a CodebookState of the same size.
    quantize = pytest.importorskip("taming.modules.vqvae.quantize")
    assert config.quantizer.num_codes * config.model.embed_dim == _torch_count(
        quantize.VectorQuantizer2(num_codes, embed_dim, beta=0.25))
    torch_disc = _reference("taming.modules.discriminator.model").NLayerDiscriminator(input_nc=3, ndf=64,
                                                                                       n_layers=disc_layers)
    disc = gan.build_discriminator(config.disc)
    disc_params = jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))["params"]
    assert _count(disc_params) == _torch_count(torch_disc)


def test_discriminator_matches_taming_in_shape_and_size():
    torch = _reference("torch")
    torch_disc = _reference("taming.modules.discriminator.model").NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)
    disc = NLayerDiscriminator(ndf=64, n_layers=3, norm="batch")
    variables = jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
    assert _count(variables["params"]) == _torch_count(torch_disc)
    logits = jax.eval_shape(lambda v: disc.apply(v, jnp.zeros((2, 256, 256, 3))), variables)
    assert logits.shape == (2, 30, 30, 1)  # 70x70 receptive fields on a 30x30 grid
    with torch.no_grad():
        assert tuple(torch_disc(torch.zeros(1, 3, 256, 256)).shape) == (1, 1, 30, 30)


def test_discriminator_norms_without_running_statistics():
    images = jnp.zeros((2, 32, 32, 3))
    for norm in ("group", "none"):
        disc = NLayerDiscriminator(ndf=8, n_layers=2, norm=norm)
        variables = disc.init(jax.random.key(0), images)
        assert set(variables) == {"params"}
        assert disc.apply(variables, images).shape == (2, 6, 6, 1)  # 32 -> 16 -> 8 -> 7 -> 6
    batch = NLayerDiscriminator(ndf=8, n_layers=2, norm="batch")
    variables = batch.init(jax.random.key(0), images)
    _, updates = batch.apply(variables, images + 1.0, train=True, mutable=["batch_stats"])
    assert not np.allclose(updates["batch_stats"]["norm_1"]["mean"], variables["batch_stats"]["norm_1"]["mean"])
    kernel = variables["params"]["conv_0"]["kernel"]
    assert abs(float(jnp.std(kernel)) - 0.02) < 0.005  # normal(0, 0.02) init


@pytest.mark.parametrize("shape,groups", [((2, 8, 8, 64), 32), ((3, 5, 7, 12), 4), ((2, 16), 8)])
def test_group_norm_is_torchs(shape, groups):
    torch = _reference("torch")
    rng = np.random.default_rng(0)
    x = (3 * rng.normal(size=shape) + 2).astype(np.float32)  # a mean far from 0: variance round-off
    scale, bias = rng.normal(size=(2, shape[-1])).astype(np.float32)
    norm = blocks.GroupNorm(num_groups=groups)
    flax_shapes = jax.eval_shape(nn.GroupNorm(num_groups=groups).init, jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes(jax.eval_shape(norm.init, jax.random.key(0), x), flax_shapes)
    out = norm.apply({"params": {"scale": scale, "bias": bias}}, x)
    reference = torch.nn.GroupNorm(groups, shape[-1], eps=1e-6)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(scale))
        reference.bias.copy_(torch.from_numpy(bias))
        expected = reference(torch.from_numpy(np.moveaxis(x, -1, 1))).numpy()
    np.testing.assert_allclose(out, np.moveaxis(expected, 1, -1), rtol=1e-5, atol=1e-5)
    # swish=True is taming's nonlinearity(norm(x)), its gradients those of the same function
    # written out (the rematerialised backward pass recomputes, it does not approximate).
    fused = blocks.GroupNorm(num_groups=groups, swish=True)
    variables = {"params": {"scale": scale, "bias": bias}}
    np.testing.assert_allclose(fused.apply(variables, x), out / (1 + np.exp(-out)), rtol=1e-5, atol=1e-5)
    cotangent = rng.normal(size=shape).astype(np.float32)
    grads = jax.grad(lambda x, v: jnp.sum(fused.apply(v, x) * cotangent), argnums=(0, 1))(x, variables)
    written_out = lambda x, v: jnp.sum(nn.swish(norm.apply(v, x)) * cotangent)
    chex.assert_trees_all_close(grads, jax.grad(written_out, argnums=(0, 1))(x, variables), rtol=1e-4, atol=1e-5)
    half = blocks.GroupNorm(num_groups=groups, dtype=jnp.bfloat16).apply(
        {"params": {"scale": scale, "bias": bias}}, x.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), out, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="not a multiple of its 5 groups"):
        blocks.GroupNorm(num_groups=5).init(jax.random.key(0), x)


@pytest.mark.extended
def test_remat_changes_memory_not_the_function():
    """`remat=True` keeps the parameter tree, the outputs and the gradients (dropout included,
    its rng replayed), and really wraps the blocks in a checkpoint."""
    from vqjax.nets.autoencoder import VQAutoencoder

    sizes = dict(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), z_channels=8,
                 embed_dim=8, resolution=8, dropout=0.2)
    plain, remat = VQAutoencoder(**sizes), VQAutoencoder(remat=True, **sizes)
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
    params = jax.jit(plain.init)(jax.random.key(0), images)["params"]
    remat_params = jax.jit(remat.init)(jax.random.key(0), images)["params"]
    chex.assert_trees_all_equal(params, remat_params)

    def loss(model, params):
        out = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(2)})
        return jnp.mean(jnp.square(out))

    value, grads = jax.jit(jax.value_and_grad(functools.partial(loss, plain)))(params)
    remat_value, remat_grads = jax.jit(jax.value_and_grad(functools.partial(loss, remat)))(params)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    chex.assert_trees_all_close(remat_grads, grads, rtol=1e-4, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(jax.grad(functools.partial(loss, remat)))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    assert "checkpoint" not in str(jax.make_jaxpr(jax.grad(functools.partial(loss, plain)))(params))
