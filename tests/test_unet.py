"""The diffusion U-Net: the DDPM paper's size, and diffusers' `UNet2DModel` function with copied
weights (the DDPM and the ADM options), and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.convert import diffusers as convert_diffusers
from vqjax.nets.unet import UNet

# google/ddpm-cifar10-32's unet/config.json (the DDPM paper's CIFAR-10 model).
DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 256],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    norm_num_groups=32, dropout=0.1)
SMALL_DDPM = dict(
    DDPM_CIFAR10, sample_size=16, block_out_channels=[16, 32], norm_num_groups=8, layers_per_block=1,
    down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"])
# The improved-DDPM / ADM options: scale-shift norm, res-block resampling, multi-head attention,
# (cos, sin) embeddings without the shift, a class embedding, extra input channels.
SMALL_ADM = dict(
    SMALL_DDPM, in_channels=5, out_channels=6, attention_head_dim=8, resnet_time_scale_shift="scale_shift",
    attn_norm_num_groups=8, downsample_type="resnet", upsample_type="resnet", downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, num_class_embeds=4,
    down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"])


def _param_count(module, size, channels=3):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, channels)),
                                                jnp.zeros((1,))))
    return sum(x.size for x in jax.tree.leaves(shapes))


def test_ddpm_cifar10_has_the_papers_parameter_count():
    # Ho et al. 2020, Appendix B: 35.7 M parameters.
    assert _param_count(UNet(**convert_diffusers.unet_kwargs(DDPM_CIFAR10)), 32) == 35_746_307


def _diffusers_unet(config, seed=0):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():  # perturb every parameter: zero-initialised ones would hide a wrong mapping
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("config", [SMALL_DDPM, SMALL_ADM], ids=["ddpm", "adm"])
def test_same_outputs_as_diffusers_with_copied_weights(config):
    import torch

    reference = _diffusers_unet(config)
    kwargs = convert_diffusers.unet_kwargs(config)
    unet = UNet(**kwargs)
    rng = np.random.default_rng(0)
    size, data_channels = config["sample_size"], 3
    cond_channels = config["in_channels"] - data_channels
    x = rng.normal(size=(3, size, size, data_channels)).astype(np.float32)
    cond = rng.normal(size=(3, size, size, cond_channels)).astype(np.float32) if cond_channels else None
    t = np.array([0, 17, 999])
    labels = np.array([0, 3, 1]) if config.get("num_class_embeds") else None

    expected_shapes = jax.eval_shape(lambda: unet.init(jax.random.key(0), x, t, labels, cond))["params"]
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    params = convert_diffusers.unet_params(state, expected_shapes, kwargs, "the test model")
    got = unet.apply({"params": params}, x, t, labels, cond)

    inputs = x if cond is None else np.concatenate([x, cond], axis=-1)
    with torch.no_grad():
        want = reference(torch.from_numpy(inputs.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                         class_labels=None if labels is None else torch.from_numpy(labels)).sample
    want = want.numpy().transpose(0, 2, 3, 1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_old_attention_names_of_the_released_checkpoints_convert():
    reference = _diffusers_unet(SMALL_DDPM)
    state = {}
    for name, tensor in reference.state_dict().items():  # the names of diffusers < 0.14
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            name = name.replace(f".{new}.", f".{old}.")
        state[name] = tensor.numpy()
    assert any(".query." in name for name in state)
    kwargs = convert_diffusers.unet_kwargs(SMALL_DDPM)
    unet = UNet(**kwargs)
    shapes = jax.eval_shape(lambda: unet.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,))))
    params = convert_diffusers.unet_params(state, shapes["params"], kwargs, "old")
    np.testing.assert_array_equal(params["mid_attn"]["q"]["kernel"],
                                  reference.state_dict()["mid_block.attentions.0.to_q.weight"].numpy().T)


def test_a_config_that_does_not_describe_the_weights_names_the_tensor():
    state = {k: v.numpy() for k, v in _diffusers_unet(SMALL_DDPM).state_dict().items()}
    kwargs = convert_diffusers.unet_kwargs(dict(SMALL_DDPM, block_out_channels=[16, 48]))
    unet = UNet(**kwargs)
    shapes = jax.eval_shape(lambda: unet.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,))))
    with pytest.raises(ValueError, match=r"tensor down_blocks\.1\.\S+ has shape \(32,\), expected \(48,\)"):
        convert_diffusers.unet_params(state, shapes["params"], kwargs, "the test model")


@pytest.mark.parametrize("change, message", [
    (dict(time_embedding_type="fourier"), "time_embedding_type='fourier' is not supported"),
    (dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"]), "not a DDPM U-Net"),
    (dict(downsample_type="resnet"), "must both be 'conv' or both 'resnet'"),
])
def test_unsupported_diffusers_options_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        convert_diffusers.unet_kwargs(dict(SMALL_DDPM, **change))


def test_image_sides_not_divisible_by_the_levels_are_one_sentence():
    unet = UNet(channels=16, channel_mult=(1, 2, 2), norm_groups=8, attention_resolutions=())
    with pytest.raises(ValueError, match="multiples of 4; got 18x16"):
        unet.init(jax.random.key(0), jnp.zeros((1, 18, 16, 3)), jnp.zeros((1,)))
