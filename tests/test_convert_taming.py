"""taming-transformers / latent-diffusion checkpoints through `python -m vqjax.convert taming`
and `vqjax.pretrained.load`, against taming's own modules with random weights.

Tolerance: float32, rtol 1e-4 and atol 1e-4 x the reference's largest magnitude. The two
frameworks sum convolutions and GroupNorm statistics in different orders; through ~30 layers
that leaves relative differences of ~1e-6 (measured), so 1e-4 has room and still catches any
wrong weight, transpose or epsilon. Code indices must be equal.
"""

import sys
import types

import jax
import numpy as np
import pytest

from vqjax import cli as vqjax_cli, convert, pretrained
from vqjax.core import checkpoints, parallel
from vqjax.families import vqgan as gan
from vqjax.train import experiment
from vqjax.convert import taming as taming_convert
from vqjax.nets import lpips as lpips_lib

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")
taming_model = pytest.importorskip("taming.modules.diffusionmodules.model")
taming_quantize = pytest.importorskip("taming.modules.vqvae.quantize")
taming_disc = pytest.importorskip("taming.modules.discriminator.model")
lpips_pkg = pytest.importorskip("lpips")

VQLPIPS = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"


def _ddconfig(**sizes):
    return dict(double_z=False, in_channels=3, out_ch=3, dropout=0.0, **sizes)


# name -> (model.target, ddconfig, embed_dim, n_embed, lossconfig, image size)
MODELS = {
    # taming VQModel with attention (at 8x8), a discriminator and LPIPS in the checkpoint.
    "attention": ("taming.models.vqgan.VQModel",
                  _ddconfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=32,
                            resolution=16),
                  16, 64,
                  {"target": VQLPIPS, "params": dict(disc_num_layers=2, disc_ndf=16, disc_start=100,
                                                      disc_weight=0.8, disc_in_channels=3)},
                  24),
    # ImageNet f16 shape (ch_mult 1,1,2,2,4, two res blocks, attention at 16 of 256) at ch 32.
    "imagenet_f16": ("taming.models.vqgan.VQModel",
                     _ddconfig(ch=32, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                               z_channels=64, resolution=256),
                     64, 1024, None, 48),
    # latent-diffusion vq-f4 shape (no attention, 3-dim codes), as the first stage of an LDM.
    "ldm_f4": ("ldm.models.autoencoder.VQModelInterface",
               _ddconfig(ch=32, ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[], z_channels=3,
                         resolution=256),
               3, 256, {"target": "torch.nn.Identity"}, 16),
    "ema": ("taming.models.vqgan.EMAVQ",
            _ddconfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=16,
                      resolution=16),
            16, 32, None, 16),
    "gumbel": ("taming.models.vqgan.GumbelVQ",
               _ddconfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=16,
                         resolution=16),
               16, 48, None, 16),
}


class TamingVQ(torch.nn.Module):
    """taming's VQModel attribute layout, so state_dict keys are the Lightning checkpoint's."""

    def __init__(self, target, ddconfig, embed_dim, n_embed, lossconfig):
        super().__init__()
        self.encoder = taming_model.Encoder(**ddconfig)
        self.decoder = taming_model.Decoder(**ddconfig)
        z_channels = ddconfig["z_channels"]
        self.quant_conv = torch.nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, z_channels, 1)
        self.gumbel = target.endswith("GumbelVQ")
        if self.gumbel:
            self.quantize = taming_quantize.GumbelQuantize(z_channels, embed_dim, n_embed)
        else:
            self.quantize = taming_quantize.VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        if lossconfig and lossconfig["target"] == VQLPIPS:
            p = lossconfig["params"]
            self.loss = torch.nn.Module()
            self.loss.discriminator = taming_disc.NLayerDiscriminator(3, p["disc_ndf"], p["disc_num_layers"])
            self.loss.perceptual_loss = lpips_pkg.LPIPS(net="vgg", pnet_rand=True, verbose=False)

    def encode(self, x):
        h = self.quant_conv(self.encoder(x))
        if self.gumbel:
            indices = self.quantize.proj(h).argmax(1)
            return h, self.quantize.embed.weight[indices].permute(0, 3, 1, 2), indices
        z_q, _, (_, _, indices) = self.quantize(h)
        return h, z_q, indices.reshape(h.shape[0], h.shape[2], h.shape[3])

    def decode(self, z_q):
        return self.decoder(self.post_quant_conv(z_q))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _close(actual, expected):
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _save_lightning_checkpoint(state_dict, path):
    """Like a Lightning .ckpt: the weights under 'state_dict' next to pickled objects whose
    classes the converting machine does not have (here a module that exists only while saving)."""
    module = types.ModuleType("lightning_callbacks_not_installed")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    sys.modules[module.__name__] = module
    try:
        torch.save({"state_dict": state_dict, "global_step": 7, "callbacks": {"ckpt": ModelCheckpoint()}}, path)
    finally:
        del sys.modules[module.__name__]


def _build(name, seed=0):
    target, ddconfig, embed_dim, n_embed, lossconfig, size = MODELS[name]
    torch.manual_seed(seed)
    module = TamingVQ(target, ddconfig, embed_dim, n_embed, lossconfig).eval()
    images = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (2, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        h = module.quant_conv(module.encoder(images))
        # A codebook on the scale of the encoder's outputs, as a trained one is (taming's
        # uniform(-1/K, 1/K) init would put every code next to the origin).
        codes = torch.randn(n_embed, embed_dim) * h.std() + h.mean()
        (module.quantize.embed if module.gumbel else module.quantize.embedding).weight.copy_(codes)
    params = {"target": target, "params": {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": ddconfig}}
    if lossconfig:
        params["params"]["lossconfig"] = lossconfig
    state = module.state_dict()
    if target.endswith("EMAVQ"):  # EMAVectorQuantizer's buffers (not in the PyPI taming release)
        counts = torch.rand(n_embed) * 10
        state["quantize.embedding.cluster_size"] = counts
        state["quantize.embedding.embed_avg"] = codes * counts[:, None]
    return module, params, state, images


@pytest.fixture(scope="module", params=sorted(MODELS))
def converted(request, tmp_path_factory):
    name = request.param
    module, yaml_model, state, images = _build(name)
    directory = tmp_path_factory.mktemp(name)
    config_path = directory / "model.yaml"
    config_path.write_text(yaml.safe_dump({"model": yaml_model}))
    if name == "ldm_f4":  # a whole LDM checkpoint keeps its first stage under a prefix
        torch.save({f"first_stage_model.{k}": v for k, v in state.items()}, directory / "model.pth")
        ckpt = directory / "model.pth"
    else:
        ckpt = directory / "last.ckpt"
        _save_lightning_checkpoint(state, ckpt)
    argv = ["taming", "--ckpt", str(ckpt), "--config", str(config_path), "--out", str(directory / "out")]
    if name == "ldm_f4":  # one model through the `vqjax convert` pass-through, the others directly
        vqjax_cli.main(["convert", *argv])
    else:
        convert.main(argv)
    return types.SimpleNamespace(name=name, module=module, images=images, state=state, out=str(directory / "out"),
                                 tokenizer=pretrained.load(str(directory / "out")))


def test_encoder_codes_and_reconstructions_equal_taming(converted):
    name, module, images, tokenizer = converted.name, converted.module, converted.images, converted.tokenizer
    with torch.no_grad():
        h, z_q_torch, indices_torch = module.encode(images)
        reconstruction_torch = module.decode(z_q_torch)
    x = _nhwc(images)
    z = tokenizer.model.apply({"params": tokenizer.params["net"]}, x, method="encode")
    _close(z, _nhwc(h))
    z_q, indices = tokenizer.encode(x)
    np.testing.assert_array_equal(np.asarray(indices), indices_torch.numpy())
    assert len(np.unique(indices)) > 1  # the check means something only if codes differ
    _close(z_q, _nhwc(z_q_torch))
    _close(tokenizer.decode(z_q), _nhwc(reconstruction_torch))
    _close(tokenizer.decode_indices(indices), _nhwc(reconstruction_torch))
    _close(tokenizer.reconstruct(x), np.clip(_nhwc(reconstruction_torch), -1, 1))
    assert tokenizer.downsampling_factor == 2 ** (len(MODELS[name][1]["ch_mult"]) - 1)


def test_config_and_loss_parts(converted):
    name, module, images, config = converted.name, converted.module, converted.images, converted.tokenizer.config
    target, ddconfig, embed_dim, n_embed, lossconfig, _ = MODELS[name]
    assert config.model.ch_mult == tuple(ddconfig["ch_mult"]) and config.model.embed_dim == embed_dim
    assert config.quantizer.num_codes == n_embed
    assert config.quantizer.kind == {"EMAVQ": "ema", "GumbelVQ": "gumbel"}.get(target.rsplit(".")[-1], "vq")
    _, saved = checkpoints.read_latest(converted.out, "test")
    if name == "ema":  # the EMA statistics continue where taming's stopped
        np.testing.assert_array_equal(saved["extra"]["quantizer"]["cluster_size"],
                                      converted.state["quantize.embedding.cluster_size"].numpy())
        np.testing.assert_array_equal(saved["extra"]["quantizer"]["embed_sum"],
                                      converted.state["quantize.embedding.embed_avg"].numpy())
    if name != "attention":
        assert "disc_params" not in saved["extra"] and not config.loss.lpips_path
        return
    # The discriminator and LPIPS of the checkpoint come along, with taming's loss settings.
    assert (config.loss.disc_start, config.loss.disc_weight, config.disc.n_layers, config.disc.ndf) == (
        100, 0.8, 2, 16)
    x = _nhwc(images)
    disc = gan.build_discriminator(config.disc)
    logits = disc.apply({"params": saved["extra"]["disc_params"], "batch_stats": saved["extra"]["disc_batch_stats"]}, x)
    with torch.no_grad():
        logits_torch = module.loss.discriminator(images)
    _close(logits, _nhwc(logits_torch))
    lpips_params = lpips_lib.load_params(config.loss.lpips_path)
    with torch.no_grad():
        distance_torch = module.loss.perceptual_loss(images, images.flip(0)).flatten().numpy()
    distance = lpips_lib.LPIPS().apply({"params": lpips_params}, x, x[::-1])
    _close(distance, distance_torch)


@pytest.fixture(scope="module")
def attention_checkpoint():
    _, yaml_model, state, _ = _build("attention")
    return yaml_model, {k: v.numpy() for k, v in state.items()}


def _convert(yaml_model, state):
    config, _, _ = taming_convert.vqjax_config(yaml_model)
    return taming_convert.convert_state(state, config, source="last.ckpt")


def _with(yaml_model, **ddconfig):
    changed = {**yaml_model, "params": {**yaml_model["params"]}}
    changed["params"]["ddconfig"] = {**yaml_model["params"]["ddconfig"], **ddconfig}
    return changed


def test_a_config_that_does_not_describe_the_checkpoint_names_the_tensor(attention_checkpoint):
    yaml_model, state = attention_checkpoint
    with pytest.raises(ValueError, match=r"tensor decoder.conv_in.bias has shape \(64,\), expected "
                                         r"\(128,\)"):
        _convert(_with(yaml_model, ch=64), state)
    with pytest.raises(ValueError, match=r"no tensor decoder.up.0.block.2.conv1.bias \(vqjax decoder/up_0_block_2/conv1/bias, shape \(32,\)\)"):
        _convert(_with(yaml_model, num_res_blocks=2), state)
    with pytest.raises(ValueError, match=r"30 autoencoder tensors the YAML config has no place for \(first: decoder.up.1.attn.0.k.bias"):
        _convert(_with(yaml_model, attn_resolutions=[]), state)  # attention weights would be dropped
    more_codes = {**yaml_model, "params": {**yaml_model["params"], "n_embed": 128}}
    with pytest.raises(ValueError, match=r"quantize.embedding.weight has shape \(64, 16\) .* needs \(128, 16\)"):
        _convert(more_codes, state)
    gumbel = {**yaml_model, "target": "taming.models.vqgan.GumbelVQ"}
    with pytest.raises(ValueError, match="no tensor quantize.embed.weight"):
        _convert(gumbel, state)
    missing = {k: v for k, v in state.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(ValueError, match=r"no tensor decoder.conv_out.bias \(vqjax decoder/conv_out/bias, "
                                         r"shape \(3,\)\)"):
        _convert(yaml_model, missing)


def test_unsupported_settings_are_refused(attention_checkpoint):
    yaml_model, _ = attention_checkpoint
    with pytest.raises(ValueError, match="remap"):
        taming_convert.vqjax_config({**yaml_model, "params": {**yaml_model["params"], "remap": "used.npy"}})
    with pytest.raises(ValueError, match="ddconfig.tanh_out is True"):
        taming_convert.vqjax_config(_with(yaml_model, tanh_out=True))
    with pytest.raises(ValueError, match="ddconfig.n_heads is not a setting"):
        taming_convert.vqjax_config(_with(yaml_model, n_heads=4))
    with pytest.raises(ValueError, match="model.target is 'taming.models.cond_transformer.Net2NetTransformer'"):
        taming_convert.vqjax_config({**yaml_model, "target": "taming.models.cond_transformer.Net2NetTransformer"})


def test_the_command_never_overwrites_a_model_silently(tmp_path):
    _, yaml_model, state, _ = _build("ema")
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text(yaml.safe_dump({"model": yaml_model}))
    torch.save(state, tmp_path / "model.pth")
    args = ["taming", "--ckpt", str(tmp_path / "model.pth"), "--config", str(yaml_path), "--out", str(tmp_path / "out")]
    convert.main(args)
    first = pretrained.load(str(tmp_path / "out")).codebook
    with pytest.raises(SystemExit, match="already holds a model; pass --overwrite"):
        convert.main(args)
    state["quantize.embedding.weight"] += 1.0
    torch.save(state, tmp_path / "model.pth")
    convert.main(args + ["--overwrite"])
    np.testing.assert_allclose(pretrained.load(str(tmp_path / "out")).codebook, first + 1.0, rtol=1e-6)


def test_an_overwrite_that_fails_while_writing_keeps_the_old_model(tmp_path, monkeypatch):
    """--overwrite writes the new model beside the old one and swaps: a conversion that dies
    while writing (a full disk, a kill) leaves the old model loadable, and files of the user's
    in the directory are never touched."""
    from vqjax.core import checkpoints

    _, yaml_model, state, _ = _build("ema")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": yaml_model}))
    torch.save(state, tmp_path / "model.pth")
    out = tmp_path / "out"
    args = ["taming", "--ckpt", str(tmp_path / "model.pth"), "--config", str(tmp_path / "model.yaml"), "--out", str(out)]
    convert.main(args)
    (out / "notes.txt").write_text("mine")
    first = pretrained.load(str(out)).codebook

    def disk_full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_tree", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert.main(args + ["--overwrite"])
    np.testing.assert_array_equal(pretrained.load(str(out)).codebook, first)
    monkeypatch.undo()
    state["quantize.embedding.weight"] += 1.0
    torch.save(state, tmp_path / "model.pth")
    convert.main(args + ["--overwrite"])
    np.testing.assert_allclose(pretrained.load(str(out)).codebook, first + 1.0, rtol=1e-6)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "model.yaml", "out"]


@pytest.mark.extended
def test_a_converted_model_is_a_starting_point_for_init_from(tmp_path):
    """The model directory is a workdir: `config.init_from` gives a VQGAN run the converted
    autoencoder, codebook and discriminator (the trainer's use of them is in test_trainer)."""
    _, yaml_model, state, _ = _build("attention")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": yaml_model}))
    torch.save(state, tmp_path / "model.pth")
    out = str(tmp_path / "converted")
    convert.main(["taming", "--ckpt", str(tmp_path / "model.pth"), "--config", str(tmp_path / "model.yaml"),
                  "--out", out])
    config = checkpoints.read_config(out)
    config.loss.perceptual_weight = 0.0
    config.train.num_steps = 1
    mesh = parallel.make_mesh()
    family = gan.VQGANFamily(config, mesh=mesh)
    batch = {"image": jax.numpy.zeros((8, 16, 16, 3))}
    create = jax.jit(family.create, out_shardings=parallel.replicated(mesh))
    abstract = jax.eval_shape(create, jax.random.key(0), batch)
    abstract = checkpoints.abstract_like(abstract, parallel.replicated(mesh))
    state, loaded = experiment.load_init_from(out, family, abstract, create(jax.random.key(0), batch), 0.0, mesh)
    assert set(loaded) == {"params", "quantizer", "disc_params", "disc_batch_stats"}
    _, converted = checkpoints.read_latest(out, "test")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), converted["params"])
    for key in ("disc_params", "disc_batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.extra[key]), converted["extra"][key])
    np.testing.assert_array_equal(state.params["quantizer"]["codebook"],
                                  converted["params"]["quantizer"]["codebook"])
