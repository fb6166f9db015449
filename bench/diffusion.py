r"""Speed of the diffusion family beside diffusers (PyTorch) in the same run, on the same cores:
the whole train step users run (U-Net forward and backward on L_simple, gradient clipping, Adam,
the weight average) and sampling (DDIM-50 and DPM-Solver++(2M)-20, images/s), for the U-Net of
a config (`ddpm_cifar10_small` by default) and diffusers' `UNet2DModel` of the same architecture
(the parameter counts are checked equal) with its schedulers.

  python bench/diffusion.py [--config=experiments/configs/ddpm_cifar10_small.py] [--batch=64]
      [--sample_batch=16] [--json=out.json] [--peak_tflops=989]   # MFU on a GPU
      [--profile=3]   # where the train step's time goes, by kind of work, beside diffusers'
      # a few minutes on 2 CPU cores; the [interop] extra for the PyTorch peer

Random weights and data: speed does not depend on them. ratio = vqjax images/s over diffusers'.
"""

from __future__ import annotations

import os
import sys
import time

try:  # PyTorch (and diffusers, which loads torch._dynamo) before TensorFlow: see bench/train_step.py.
    import torch
    import torch._dynamo  # pylint: disable=unused-import
    import diffusers
except ImportError:
    torch = diffusers = None

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import op_profile  # pylint: disable=wrong-import-position
from common import median_seconds, write_json  # pylint: disable=wrong-import-position
from vqjax.core import optim, parallel  # pylint: disable=wrong-import-position
from vqjax.families.diffusion import DiffusionFamily  # pylint: disable=wrong-import-position
from vqjax.inference import diffusion as diffusion_lib  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/ddpm_cifar10_small.py", "Diffusion config.")
_BATCH = flags.DEFINE_integer("batch", 0, "Train batch (0: the config's).")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 16, "Images sampled per call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement.")
_PEER = flags.DEFINE_bool("peer", True, "Also time diffusers (needs PyTorch and diffusers).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "The device's peak TFLOP/s, for MFU (0: not reported).")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_PROFILE = flags.DEFINE_integer("profile", 0, "Trace this many train steps of each and print where the time "
                                "goes by kind of work (bench/op_profile.py); 0: no profile.")

SAMPLERS = (("ddim", 50, "uniform"), ("dpm_solver", 20, "linspace"))


def diffusers_unet_config(config, size: int) -> dict:
    """diffusers' UNet2DModel arguments for the config's U-Net."""
    model = config.model
    widths = [model.channels * m for m in model.channel_mult]
    attention = [size // 2 ** level in tuple(model.attention_resolutions) for level in range(len(widths))]
    return dict(sample_size=size, in_channels=config.data.channels, out_channels=config.data.channels,
                block_out_channels=widths, layers_per_block=model.num_res_blocks,
                down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
                up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
                attention_head_dim=None, downsample_padding=model.downsample_padding,
                flip_sin_to_cos=model.flip_sin_to_cos, freq_shift=model.freq_shift, norm_eps=model.norm_eps,
                norm_num_groups=model.norm_groups, dropout=model.dropout)


def vqjax_figures(config, batch: int, report: dict):
    family = DiffusionFamily(config, mesh=parallel.make_mesh(), workdir="")
    shape = family.image_shape
    rng = np.random.default_rng(0)
    data = {"image": rng.uniform(-1, 1, (batch,) + shape).astype(np.float32),
            "label": np.zeros((batch,), np.int32)}
    data = parallel.to_global(data, family.mesh)
    state = jax.jit(family.create)(jax.random.key(0), data)
    step = jax.jit(family.train_step, donate_argnums=0, compiler_options=family.compiler_options)
    compiled = step.lower(state, data).compile()
    holder = {"state": state}

    def train_step():
        holder["state"], metrics = compiled(holder["state"], data)
        return metrics

    seconds = median_seconds(train_step, _REPEATS.value)
    if _PROFILE.value:
        traced = lambda state: compiled(state, data)[0]
        report["vqjax_profile_ms"] = op_profile.xla_profile(compiled, traced, holder.pop("state"),
                                                            _PROFILE.value)["by_kind"]
        holder["state"] = jax.jit(family.create)(jax.random.key(0), data)
    report["params"] = optim.count_params(holder["state"].params)
    report["vqjax_train_images_per_sec"] = batch / seconds
    flops = (compiled.cost_analysis() or {}).get("flops") if hasattr(compiled, "cost_analysis") else None
    if isinstance(flops, (list, tuple)):
        flops = flops[0].get("flops") if flops else None
    if flops and _PEAK_TFLOPS.value:
        report["train_mfu"] = flops / seconds / (_PEAK_TFLOPS.value * 1e12)
    params = jax.device_get(holder["state"].params)
    count = _SAMPLE_BATCH.value
    x_T = jax.random.normal(jax.random.key(1), (count,) + shape)
    for sampler, steps, spacing in SAMPLERS:
        run = lambda: diffusion_lib.generate_jit(family.model, params, family.spec, jax.random.key(2), x_T, None,
                                                 None, None, None, None, sampler=sampler, steps=steps,
                                                 spacing=spacing, eta=0.0, guidance_scale=1.0, strength=1.0,
                                                 compiler_options=family.compiler_options)
        report[f"vqjax_{sampler}{steps}_images_per_sec"] = count / median_seconds(run, _REPEATS.value)
    return shape


def diffusers_figures(config, batch: int, shape: tuple, report: dict) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**diffusers_unet_config(config, shape[0]))
    report["diffusers_params"] = sum(p.numel() for p in unet.parameters())
    if report["diffusers_params"] != report["params"]:
        raise SystemExit(f"The architectures differ: {report['params']:,} vqjax parameters, "
                         f"{report['diffusers_params']:,} in diffusers.")
    spec = diffusion_lib.DiffusionSpec.from_config(config.diffusion)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=spec.num_timesteps, beta_start=spec.beta_start,
                                        beta_end=spec.beta_end, beta_schedule="linear")
    optimizer = torch.optim.Adam(unet.parameters(), lr=float(config.optim.learning_rate))
    ema = [p.detach().clone() for p in unet.parameters()]
    images = torch.rand(batch, shape[2], shape[0], shape[1]) * 2 - 1
    decay = float(config.optim.params_ema_decay)

    def train_step():  # diffusers' train_unconditional.py: add_noise, MSE on eps, clip, Adam, EMA
        unet.train()
        noise = torch.randn_like(images)
        t = torch.randint(0, spec.num_timesteps, (batch,))
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(images, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), float(config.optim.grad_clip_norm))
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 1 - decay)
        return loss.item()

    report["diffusers_train_images_per_sec"] = batch / _torch_seconds(train_step)
    if _PROFILE.value:
        report["diffusers_profile_ms"] = op_profile.torch_profile(lambda _: train_step(), _PROFILE.value)["by_kind"]
    unet.eval()
    count = _SAMPLE_BATCH.value
    x_T = torch.randn(count, shape[2], shape[0], shape[1])
    peers = {"ddim": diffusers.DDIMScheduler, "dpm_solver": diffusers.DPMSolverMultistepScheduler}
    for sampler, steps, _ in SAMPLERS:
        sampler_scheduler = peers[sampler].from_config(scheduler.config)

        def sample():
            sampler_scheduler.set_timesteps(steps)
            x = x_T
            with torch.no_grad():
                for t in sampler_scheduler.timesteps:
                    x = sampler_scheduler.step(unet(x, t).sample, t, x).prev_sample
            return x

        report[f"diffusers_{sampler}{steps}_images_per_sec"] = count / _torch_seconds(sample)


def _torch_seconds(call) -> float:
    call()
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv):
    del argv
    config = _CONFIG.value
    config.data.source = "embedded"  # shapes only: the figures use random data
    batch = _BATCH.value or int(config.data.batch_size)
    report = {"config": config_flags.get_config_filename(flags.FLAGS["config"]), "batch": batch,
              "sample_batch": _SAMPLE_BATCH.value, "device": jax.devices()[0].device_kind}
    shape = vqjax_figures(config, batch, report)
    if _PEER.value and diffusers is not None:
        diffusers_figures(config, batch, shape, report)
        report["train_ratio"] = report["vqjax_train_images_per_sec"] / report["diffusers_train_images_per_sec"]
        for sampler, steps, _ in SAMPLERS:
            name = f"{sampler}{steps}"
            report[f"{name}_ratio"] = (report[f"vqjax_{name}_images_per_sec"]
                                       / report[f"diffusers_{name}_images_per_sec"])
    print(f"U-Net of {report['config']}: {report['params']:,} parameters, {shape[0]}x{shape[1]}x{shape[2]}, "
          f"train batch {batch}, sampling batch {report['sample_batch']}, {report['device']}")
    for what in ["train"] + [f"{s}{n}" for s, n, _ in SAMPLERS]:
        line = f"  {what:>14}: vqjax {report[f'vqjax_{what}_images_per_sec']:8.2f} images/s"
        if f"diffusers_{what}_images_per_sec" in report:
            line += (f", diffusers {report[f'diffusers_{what}_images_per_sec']:8.2f} images/s, "
                     f"ratio {report[f'{what}_ratio']:.2f}x")
        print(line)
    if _PROFILE.value:
        print(f"Train step, {_PROFILE.value} traced steps (bench/op_profile.py), by kind of work:")
        op_profile.print_table({name: report[f"{name}_profile_ms"] for name in ("vqjax", "diffusers")
                                if f"{name}_profile_ms" in report})
    if "train_mfu" in report:
        print(f"  train step MFU: {100 * report['train_mfu']:.1f}%")
    if _JSON.value:
        write_json(_JSON.value, report)


if __name__ == "__main__":
    app.run(main)
