"""The diffusion family, its configs, `vqjax.diffusion.load` and the diffusers converter."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vqjax.diffusion
import vqjax.pretrained
from tests.helpers import diffusion_config_names, load_config
from vqjax.convert import cli as convert_cli
from vqjax.core import optim, parallel
from vqjax.diffusion import process
from vqjax.diffusion.schedules import make_schedule
from vqjax.families.diffusion import DiffusionFamily, ema_decay_at, objective
from vqjax.inference import diffusion as diffusion_lib
from vqjax.train import experiment


@pytest.mark.parametrize("name", diffusion_config_names())
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_builds_its_unet(name, arg):
    config = load_config(name, arg)
    config.lock()
    spec = diffusion_lib.DiffusionSpec.from_config(config.diffusion)
    shape = diffusion_lib.image_shape_of(config)
    model = diffusion_lib.build_unet(config.model, shape[-1], spec)
    model.check_input(*shape[:2])
    params = jax.eval_shape(lambda: diffusion_lib.init_params(model, jax.random.key(0), shape, spec))
    assert optim.count_params(params) > 0
    assert config.evals.bpd_timesteps >= 1 and config.sampling.steps <= config.diffusion.num_timesteps


def test_ddpm_cifar10_config_has_the_papers_settings():
    config = load_config("ddpm_cifar10")
    spec = diffusion_lib.DiffusionSpec.from_config(config.diffusion)
    model = diffusion_lib.build_unet(config.model, 3, spec)
    params = jax.eval_shape(lambda: diffusion_lib.init_params(model, jax.random.key(0), (32, 32, 3), spec))
    assert optim.count_params(params) == 35_746_307  # 35.7 M (Ho et al. 2020, appendix B)
    assert (spec.schedule, spec.num_timesteps, spec.beta_start, spec.beta_end, spec.prediction) == \
        ("linear", 1000, 1e-4, 0.02, "eps")
    assert (config.optim.learning_rate, config.optim.warmup_steps, config.optim.grad_clip_norm,
            config.optim.params_ema_decay, config.data.batch_size, config.model.dropout) == \
        (2e-4, 5000, 1.0, 0.9999, 128, 0.1)
    assert config.data.random_flip and tuple(config.model.attention_resolutions) == (16,)


def test_weight_average_warm_up():
    decays = np.asarray(ema_decay_at(jnp.array([0, 1, 90, 10**6]), 0.9999))
    np.testing.assert_allclose(decays, [1 / 10, 2 / 11, 91 / 100, 0.9999], rtol=1e-6)


def _family(config, mesh=None):
    return DiffusionFamily(config, mesh=mesh or parallel.make_mesh(), workdir="")


def test_learned_variance_trains_the_variance_by_the_bound_only():
    """The hybrid objective: the bound's gradient reaches the variance outputs, never the mean's
    (improved DDPM's stop-gradient), so the mean outputs' gradient is L_simple's alone."""
    schedule = make_schedule("linear", 1000)
    rng = np.random.default_rng(0)
    images, noise = (jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 3)), jnp.float32) for _ in range(2))
    t = jnp.array([0, 3, 500, 999])
    x_t = process.q_sample(schedule, images, t, noise)
    output = jnp.asarray(rng.normal(size=(4, 8, 8, 6)), jnp.float32)

    def gradient(vlb_weight):
        spec = diffusion_lib.DiffusionSpec(variance="learned_range", vlb_weight=vlb_weight)
        return jax.grad(lambda out: jnp.mean(objective(spec, schedule, out, images, x_t, t, noise)[0]))(output)

    without, with_bound = gradient(0.0), gradient(0.001)
    np.testing.assert_array_equal(with_bound[..., :3], without[..., :3])
    np.testing.assert_allclose(without[..., :3], 2 * (output[..., :3] - noise) / (4 * 8 * 8 * 3), rtol=1e-5)
    assert float(jnp.abs(without[..., 3:]).max()) == 0.0
    assert float(jnp.abs(with_bound[..., 3:]).max()) > 0.0


def test_smoke_run_writes_samples_and_a_bits_per_dim(trained_diffusion):
    _, workdir, metrics = trained_diffusion  # diffusion_quickstart:smoke (tests/conftest.py)
    assert os.path.exists(os.path.join(workdir, "samples.png"))
    with open(os.path.join(workdir, "metrics.json")) as f:
        saved = json.load(f)
    assert np.isfinite(saved["bits_per_dim"]) and saved["bpd_timesteps_per_image"] == 4
    assert saved["bpd_num_images"] == 16  # 2 eval batches of 8
    assert "fid" in saved["skipped"]


def test_loaded_model_samples_inpaints_and_scores(trained_diffusion):
    _, workdir, _ = trained_diffusion
    model = vqjax.diffusion.load(workdir)
    # The trainer's sampling settings and batch (8 images, DDIM 5 steps): its compiled program.
    noise = jax.random.normal(jax.random.key(5), (8,) + model.image_shape)
    a = model.sample(jax.random.key(0), 8, steps=5, noise=noise)
    b = model.sample(jax.random.key(1), 8, steps=5, noise=noise)
    assert a.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(a, b)  # DDIM with eta 0 from the same x_T
    c = model.sample(jax.random.key(1), 8, steps=5, sampler="ddpm")
    assert np.all(np.abs(np.asarray(c)) <= 1.0 + 1e-6) and not np.allclose(a, c)
    images = np.asarray(a)
    mask = np.zeros((32, 32), np.float32)
    mask[:, :16] = 1
    filled = np.asarray(model.inpaint(images, mask, jax.random.key(2), steps=5))
    np.testing.assert_allclose(filled[:, :, :16], images[:, :, :16], atol=1e-6)
    assert not np.allclose(filled[:, :, 16:], images[:, :, 16:])
    bpd = model.bits_per_dim(images, jax.random.key(3), num_timesteps=2)
    assert bpd.shape == (8,) and np.all(np.isfinite(np.asarray(bpd)))


def test_errors_are_sentences(trained_diffusion):
    _, workdir, _ = trained_diffusion
    model = vqjax.diffusion.load(workdir)
    with pytest.raises(ValueError, match="Unknown sampler 'euler'"):
        model.sample(jax.random.key(0), 2, sampler="euler")
    with pytest.raises(ValueError, match="between 1 and 100 .* not 101"):
        model.sample(jax.random.key(0), 2, steps=101)
    with pytest.raises(ValueError, match="unconditional; call it without labels"):
        model.sample(jax.random.key(0), 2, labels=[0, 1])
    with pytest.raises(ValueError, match=r"images must be \[B, 32, 32, 3\]"):
        model.bits_per_dim(np.zeros((2, 30, 30, 3)), jax.random.key(0))
    with pytest.raises(ValueError, match="only super-resolution models"):
        model.upsample(np.zeros((2, 8, 8, 3)), jax.random.key(0))
    config = load_config("diffusion_quickstart", "smoke")
    config.diffusion.schedule = "cosin"
    with pytest.raises(ValueError, match="config.diffusion.schedule is 'cosin'"):
        _family(config)
    config = load_config("diffusion_quickstart", "smoke")
    config.model.channel_mult = (1, 2, 2)
    config.data.image_size = 30
    with pytest.raises(ValueError, match="multiples of 4; got 30x30"):
        _family(config)
    with pytest.raises(ValueError, match="holds a vqvae model, not a diffusion model"):
        vqjax.diffusion.load(_tokenizer_dir(trained_diffusion))
    config = load_config("ldm_vq_cifar10", "smoke")
    config.tokenizer_dir = os.path.join(workdir, "missing")
    with pytest.raises(ValueError, match="missing has no config.json"):
        _family(config)
    config.tokenizer_dir = workdir
    with pytest.raises(ValueError, match="holds a diffusion model, not a tokenizer"):
        _family(config)


def _tokenizer_dir(trained_diffusion):
    """A workdir of another family (a vqvae config.json beside an empty checkpoints/)."""
    workdir = os.path.join(os.path.dirname(trained_diffusion[1]), "not_diffusion")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(load_config("vqvae_quickstart", "smoke").to_json())
    return workdir


def test_class_conditional_model_with_guidance():
    config = load_config("diffusion_quickstart", "smoke")
    config.model.num_classes = 8
    config.diffusion.cond_drop = 0.2
    family = _family(config)
    batch = parallel.to_global(family.example(), family.mesh)
    state = jax.jit(family.create, out_shardings=parallel.replicated(family.mesh))(jax.random.key(0), batch)
    state, metrics = jax.jit(family.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    model = diffusion_lib.Diffusion(config, family.spec, family.model, jax.device_get(state.params), family.image_shape)
    guided = model.sample(jax.random.key(0), 2, labels=[1, 2], steps=2, guidance_scale=3.0)
    plain = model.sample(jax.random.key(0), 2, labels=[1, 2], steps=2)
    assert guided.shape == plain.shape and not np.allclose(guided, plain)
    with pytest.raises(ValueError, match=r"labels must be 2 classes in \[0, 8\]"):
        model.sample(jax.random.key(0), 2, labels=[1, 9])


def test_residual_super_resolution_adds_the_residual_to_bicubic():
    """A residual model whose U-Net predicts x_0 = 0 (zero weights) upsamples to exactly the
    bicubic upsampling, through each sampler."""
    config = load_config("sr_quickstart", "smoke")
    config.diffusion.update(prediction="x0", residual_scale=10.0)
    spec = diffusion_lib.DiffusionSpec.from_config(config.diffusion)
    model = diffusion_lib.build_unet(config.model, 3, spec)
    params = jax.tree.map(jnp.zeros_like, diffusion_lib.init_params(model, jax.random.key(0), (32, 32, 3), spec))
    diffusion = diffusion_lib.Diffusion(config, spec, model, params, (32, 32, 3))
    low = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1.0, maxval=1.0)
    bicubic = jnp.clip(jax.image.resize(low, (2, 32, 32, 3), "bicubic"), -1.0, 1.0)
    for sampler in ("ddim", "ddpm", "dpm_solver"):
        out = diffusion.upsample(low, jax.random.key(2), sampler=sampler, steps=4)
        np.testing.assert_allclose(out, bicubic, atol=1e-5, err_msg=sampler)
    with pytest.raises(ValueError, match="residual_scale is -1.0"):
        diffusion_lib.DiffusionSpec.from_config({**config.diffusion.to_dict(), "residual_scale": -1.0})
    with pytest.raises(ValueError, match="with low_res_size > 0"):
        diffusion_lib.DiffusionSpec.from_config({**config.diffusion.to_dict(), "low_res_size": 0})


@pytest.mark.extended
def test_super_resolution_smoke_run(tmp_path):
    config = load_config("sr_quickstart", "smoke")
    metrics = experiment.train_and_evaluate(config, str(tmp_path))
    assert os.path.exists(tmp_path / "superres.png")
    assert {"sr_psnr", "sr_ssim", "bicubic_psnr", "bicubic_ssim"} <= set(metrics)
    assert metrics["sr_num_images"] == config.evals.num_sr_images
    model = vqjax.diffusion.load(str(tmp_path))
    size = config.diffusion.low_res_size
    out = model.upsample(np.zeros((8, size, size, 3), np.float32), jax.random.key(0), steps=5)
    assert out.shape == (8, 32, 32, 3)
    with pytest.raises(ValueError, match="super-resolution model: call upsample"):
        model.sample(jax.random.key(0), 2, steps=3)


# ----------------------------------------------------------------------------------------
# diffusers pipelines.


def test_converted_diffusers_pipeline_samples_what_diffusers_does(tmp_path):
    """The same x_T through DDIM (10 steps, eta 0, x_0 clipped with eps re-derived) in diffusers
    (UNet2DModel + DDIMScheduler, on the CPU in float32) and in vqjax after conversion."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from tests.test_unet import SMALL_DDPM, _diffusers_unet

    unet = _diffusers_unet(SMALL_DDPM)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp_path / "pipeline"))
    convert_cli.main(["diffusers", "--pipeline", str(tmp_path / "pipeline"), "--out", str(tmp_path / "model")])
    model = vqjax.diffusion.load(str(tmp_path / "model"))
    assert model.image_shape == (16, 16, 3) and model.spec.variance == "fixed_large"

    x_T = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    ours = np.asarray(model.sample(jax.random.key(0), 2, steps=10, noise=x_T))
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(10)
    x = torch.from_numpy(x_T.transpose(0, 3, 1, 2))
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    theirs = x.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_converter_refuses_what_it_cannot_convert(tmp_path):
    pytest.importorskip("diffusers")
    with pytest.raises(SystemExit, match="has no unet/config.json"):
        convert_cli.main(["diffusers", "--pipeline", str(tmp_path), "--out", str(tmp_path / "out")])
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    from tests.test_unet import SMALL_DDPM

    (tmp_path / "unet" / "config.json").write_text(json.dumps(SMALL_DDPM))
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "sigmoid"}))
    with pytest.raises(SystemExit, match="beta_schedule='sigmoid' is not supported"):
        convert_cli.main(["diffusers", "--pipeline", str(tmp_path), "--out", str(tmp_path / "out")])
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({}))
    with pytest.raises(SystemExit, match="no unet/diffusion_pytorch_model.safetensors"):
        convert_cli.main(["diffusers", "--pipeline", str(tmp_path), "--out", str(tmp_path / "out")])


def _random_latent_model():
    """A latent diffusion model of random weights on a random VQ-VAE (smoke sizes, 32x32 images
    to 8x8 latents)."""
    from vqjax import quantizers
    from vqjax.nets import build as nets
    from vqjax.families.tokenizer import init_params as tokenizer_init
    from vqjax.inference.tokenizer import Tokenizer

    tok_config = load_config("vqvae_quickstart", "smoke")
    autoencoder = nets.build_autoencoder(**tok_config.model)
    quantizer = quantizers.build(tok_config.quantizer, dim=tok_config.model.embed_dim)
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
    tokenizer = Tokenizer(tok_config, *tokenizer_init(autoencoder, quantizer, jax.random.key(1), images))
    config = load_config("ldm_vq_cifar10", "smoke")
    spec = diffusion_lib.DiffusionSpec.from_config(config.diffusion)
    side = 32 // tokenizer.downsampling_factor
    shape = (side, side, tokenizer.quantizer.dim)
    model = diffusion_lib.build_unet(config.model, shape[-1], spec)
    params = diffusion_lib.init_params(model, jax.random.key(2), shape, spec)
    return diffusion_lib.Diffusion(config, spec, model, params, shape, tokenizer=tokenizer, latent_scale=1.7)


def test_latent_mask_keeps_a_latent_only_where_all_its_pixels_are_kept():
    mask = (np.random.default_rng(0).random((2, 8, 12, 3)) > 0.1).astype(np.float32)
    expected = np.ones((2, 2, 3, 1), np.float32)
    for b, i, j, c in zip(*np.nonzero(mask == 0)):
        expected[b, i // 4, j // 4, 0] = 0.0
    np.testing.assert_array_equal(diffusion_lib.latent_mask(jnp.asarray(mask), 4), expected)


def test_latent_inpaint_and_edit_work_on_the_tokenizers_latents(monkeypatch):
    """Latent models inpaint by keeping the latents of wholly kept patches (their encodings,
    scaled) and edit from the images' scaled latents; the result is the tokenizer's decoding of
    the generated latents, with kept pixels put back exactly."""
    diffusion = _random_latent_model()
    assert diffusion.pixel_shape == (32, 32, 3) and diffusion.image_shape[:2] == (8, 8)
    runs = []
    real_run = diffusion._run

    def recording_run(*args, **kwargs):
        runs.append(dict(kwargs, out=real_run(*args, **kwargs)))
        return runs[-1]["out"]

    monkeypatch.setattr(diffusion, "_run", recording_run)
    images = np.asarray(jax.random.uniform(jax.random.key(3), (2, 32, 32, 3), minval=-1.0, maxval=1.0))
    mask = np.ones((32, 32), np.float32)
    mask[8:22, 10:30] = 0.0  # latents of rows 2..5, columns 2..7 are partly unknown
    out = np.asarray(diffusion.inpaint(images, mask, jax.random.key(4), steps=4))
    latents = np.asarray(diffusion.tokenizer.latents(images)) * 1.7
    known_cells = np.ones((8, 8), bool)
    known_cells[2:6, 2:8] = False
    np.testing.assert_allclose(runs[0]["known"], latents, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(runs[0]["mask"][..., 0], np.broadcast_to(known_cells, (2, 8, 8)))
    generated = np.asarray(runs[0]["out"])
    np.testing.assert_allclose(generated[:, known_cells], latents[:, known_cells], atol=1e-4)
    assert not np.allclose(generated[:, ~known_cells], latents[:, ~known_cells], atol=0.1)
    decoded = np.clip(np.asarray(diffusion.tokenizer.decode_latents(generated / 1.7)), -1, 1)
    hole = mask == 0
    np.testing.assert_array_equal(out[:, ~hole], images[:, ~hole])
    np.testing.assert_allclose(out[:, hole], decoded[:, hole], atol=1e-5)

    edited = np.asarray(diffusion.edit(images, jax.random.key(5), strength=0.3, steps=4))
    np.testing.assert_allclose(runs[1]["start_image"], latents, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(edited, np.clip(np.asarray(diffusion.tokenizer.decode_latents(
        np.asarray(runs[1]["out"]) / 1.7)), -1, 1), atol=1e-5)
    with pytest.raises(ValueError, match=r"images must be \[B, 32, 32, 3\]"):
        diffusion.edit(images[:, :16], jax.random.key(5))
    with pytest.raises(ValueError, match="no discrete likelihood"):
        diffusion.bits_per_dim(images, jax.random.key(0))


@pytest.mark.extended
def test_latent_diffusion_on_a_tokenizer(trained_vqgan, tmp_path):
    """ldm_vq_cifar10's smoke config on the shared VQGAN workdir: latents cached, scaled to unit
    variance over the first global batch, samples decoded through the tokenizer."""
    _, tokenizer_dir, _ = trained_vqgan
    config = load_config("ldm_vq_cifar10", "smoke")
    config.tokenizer_dir = tokenizer_dir
    metrics = experiment.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(metrics["eval_loss"]) and "bits_per_dim" in metrics["skipped"]
    assert os.path.exists(tmp_path / "samples.png") and os.path.exists(tmp_path / "latents" / "train_flip.npz")
    cached = np.load(tmp_path / "latents" / "train_flip.npz")["latents"]
    tokenizer = vqjax.pretrained.load(tokenizer_dir)
    assert cached.shape[1:] == (32 // tokenizer.downsampling_factor,) * 2 + (tokenizer.quantizer.dim,)
    model = vqjax.diffusion.load(str(tmp_path))
    first = np.random.default_rng([config.data.seed, 0]).permutation(len(cached))[:config.data.batch_size]
    np.testing.assert_allclose(model.latent_scale, 1 / np.std(cached[first]), rtol=1e-5)
    images = np.asarray(model.sample(jax.random.key(0), 8, steps=5))
    assert images.shape == (8, 32, 32, 3) and np.abs(images).max() <= 1.0
    # Decoding is the tokenizer's: nearest codes of the unscaled latents, then its decoder.
    latents = np.asarray(model._run(jax.random.key(0), model._noise(jax.random.key(0), 8, None), steps=5,
                                    sampler="ddim"))
    np.testing.assert_allclose(images, np.clip(tokenizer.decode_latents(latents / model.latent_scale), -1, 1),
                               atol=1e-5)
    with pytest.raises(ValueError, match="latent diffusion model"):
        model.bits_per_dim(np.zeros((2, 32, 32, 3)), jax.random.key(0))
    inpainted = np.asarray(model.inpaint(np.zeros((2, 32, 32, 3)), np.ones((32, 32)), jax.random.key(0), steps=5))
    np.testing.assert_array_equal(inpainted, 0.0)
    config.tokenizer_dir = ""
    with pytest.raises(ValueError, match="config.tokenizer_dir is empty"):
        _family(config)
