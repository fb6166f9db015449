r"""Train-step throughput of a tokenizer config, and taming-transformers' PyTorch beside it.

Times the jit-compiled train step that `experiments.vqvae` / `experiments.vqgan` would run
for --config (random images of the config's size; data loading is not timed), on one device:
images/s (median over --steps steps after two warm-up steps), compile seconds and XLA's
memory figure for the step (arguments + outputs + temporaries; on a GPU also the device's
peak bytes in use).

With --peer=taming (PyTorch and taming-transformers installed, the [interop] extra) it also
times, in the same process and on the same cores:
  * taming's modules of the identical architecture (`Encoder`, `Decoder`, `VectorQuantizer2`,
    the 1x1 quant convolutions) trained with L1 + VQ loss and Adam, beside vqjax's train step
    with that same loss (the config changed to a codebook learned by loss, no discriminator,
    no LPIPS, no dead-code restarts): the "L1 + VQ" ratio;
  * for a VQGAN config, taming's whole `VQModel.training_step` as Lightning runs it (its
    `VQLPIPSWithDiscriminator` with random VGG weights, the adaptive weight, both optimizers,
    the discriminator active) beside the config's own step: the "full" ratio (`full_ratio` in
    --json).

A config whose perceptual loss has no LPIPS weights is timed with random LPIPS weights (the
same cost). Command, from the repository root (about 5 minutes on 2 CPU cores):

  python bench/train_step.py --config=experiments/configs/vqgan_cifar10.py \
      --config.data.batch_size=32 --peer=taming [--steps=10] [--json=bench/results/train_step.json]

`--peak_tflops=P` adds the model FLOP utilisation: XLA's FLOP count of the compiled step over
its time, divided by P (the device's peak in the compute dtype), e.g. on a GPU:

  python bench/train_step.py --config=experiments/configs/vqgan_imagenet_f16_16384.py \
      --config.model.dtype=bfloat16 --config.disc.dtype=bfloat16 --peak_tflops=989

Any `--config.*` override works as in the entry points (`--config.model.dtype=bfloat16`,
`--config.model.remat=True`, `--config.train.cpu_convolutions=ynnpack` to time the step with
XLA's default CPU convolutions). `--profile=3` traces three more steps of each implementation
and prints a table of where the time goes (convolutions forward and backward, layout copies,
GroupNorm + swish, matmuls, other; bench/op_profile.py), side by side with PyTorch's own
profile under --peer, and for vqjax a second table by network (autoencoder, LPIPS,
discriminator, the rest).
"""

from __future__ import annotations

import copy
import os
import sys
import time
import types
from typing import Any, Callable

# PyTorch first, when installed: imported after TensorFlow, torch._dynamo (which every torch
# optimizer imports lazily) loads triton and crashes the process.
try:
    import torch
    import torch._dynamo  # pylint: disable=unused-import
except ImportError:
    torch = None

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import op_profile  # pylint: disable=wrong-import-position
from common import median_seconds, write_json, xla_memory_mb  # pylint: disable=wrong-import-position
from vqjax import families  # pylint: disable=wrong-import-position
from vqjax.core import optim, parallel  # pylint: disable=wrong-import-position
from vqjax.nets import lpips  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Tokenizer config file.",
                                          lock_config=True)
_PEER = flags.DEFINE_enum("peer", None, ["taming"], "Also time this PyTorch reference.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per implementation.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", None, "The device's peak dense TFLOP/s in the step's compute dtype (e.g. 989 "
    "for an H100 SXM in bfloat16): prints the model FLOP utilisation (MFU).")
_PROFILE = flags.DEFINE_integer(
    "profile", 0, "Trace this many more steps of each implementation and print where the time "
    "goes: convolutions (forward, backward), layout copies, GroupNorm + swish, matmuls, other "
    "(bench/op_profile.py).")
flags.mark_flag_as_required("config")


def image_shape(config) -> tuple[int, int, int, int]:
    size = int(config.data.image_size)
    channels = int(config.model.get("in_channels", config.data.get("channels", 3)))
    return (int(config.data.batch_size), size, size, channels)


def device_peak_mb() -> float | None:
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else stats["peak_bytes_in_use"] / 2**20


def median_step_seconds(step: Callable, state, num_steps: int) -> tuple[float, Any]:
    """Median seconds of `state = step(state)` over `num_steps` calls, after two warm-up calls,
    and the last state (the first may have been donated)."""
    carried = [state]

    def call():
        carried[0] = step(carried[0])
        return carried[0]

    return median_seconds(call, num_steps, warmup=2), carried[0]


def bench_vqjax(config, label: str) -> dict:
    """images/s, compile seconds and memory of the config's train step."""
    family_kwargs = {}
    if config.family == "vqgan" and config.loss.perceptual_weight > 0 and not config.loss.lpips_path:
        print("  (no LPIPS weights: the perceptual loss runs with random ones, at the same cost)")
        both = jnp.zeros((1, 64, 64, 3), jnp.float32)
        family_kwargs["perceptual_params"] = lpips.LPIPS().init(jax.random.key(0), both, both)["params"]
    mesh = parallel.make_mesh(jax.devices()[:1])
    family = families.build(config, mesh=mesh, workdir="", **family_kwargs)
    shape = image_shape(config)
    images = jax.random.uniform(jax.random.key(1), shape, jnp.float32, -1.0, 1.0)
    batch = {"image": images}
    state = jax.jit(family.create)(jax.random.key(config.seed), batch)

    train_step = jax.jit(family.train_step, donate_argnums=0, compiler_options=family.compiler_options)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, *family.frozen).compile()
    compile_s = time.perf_counter() - start

    def step(state):
        return compiled(state, batch, *family.frozen)[0]

    seconds, state = median_step_seconds(step, state, _STEPS.value)
    # XLA's count of the compiled step's floating-point operations (all of them: forward,
    # backward, optimizer), so TFLOP/s and MFU are of what the step really does.
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    flops = float(costs.get("flops", 0.0)) if costs else 0.0
    result = {
        "step": label,
        "images_per_sec": shape[0] / seconds,
        "step_ms": 1e3 * seconds,
        "compile_s": compile_s,
        "peak_mem_mb": xla_memory_mb(compiled),
        "device_peak_mem_mb": device_peak_mb(),
        "params": optim.count_params(state.params["net"]),
        "disc_params": optim.count_params(state.extra["disc_params"]) if "disc_params" in state.extra else None,
        "step_tflop": flops / 1e12,
        "tflops_per_sec": flops / 1e12 / seconds,
        "mfu": flops / 1e12 / seconds / _PEAK_TFLOPS.value if _PEAK_TFLOPS.value else None,
    }
    if _PROFILE.value:
        result["profile_ms"] = op_profile.xla_profile(compiled, step, state, _PROFILE.value)
    mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
    print(f"  vqjax {label}: {result['images_per_sec']:.1f} images/s ({result['step_ms']:.0f} ms "
          f"per step of {shape[0]}, {1e3 * result['tflops_per_sec']:.0f} GFLOP/s{mfu}), compiled in "
          f"{compile_s:.1f} s, {result['peak_mem_mb']:.0f} MB, {result['params'] / 1e6:.2f} M "
          "autoencoder params")
    return result


def peer_loss_config(config):
    """The config changed to what taming's peer trains: autoencoder + learned codebook, L1 + VQ."""
    matched = copy.deepcopy(config)
    with matched.unlocked():
        for section in ("disc", "optim_d"):
            if section in matched:
                del matched[section]
        matched.family = "vqvae"  # one network trained by one loss
        matched.loss = {"reconstruction": "l1"}
        matched.quantizer.update(kind="vq", init="uniform", dead_code_threshold=0.0)
        matched.optim.params_ema_decay = 0.0
    return matched


def taming_modules(config):
    """taming's Encoder/Decoder/VectorQuantizer2 and 1x1 quant convolutions of the config's
    architecture, as its `VQModel` holds them."""
    if torch is None:
        raise ImportError("--peer=taming needs PyTorch and taming-transformers: "
                          "pip install -e '.[interop]'.")
    from taming.modules.diffusionmodules import model as taming_model  # pylint: disable=import-outside-toplevel
    from taming.modules.vqvae import quantize as taming_quantize  # pylint: disable=import-outside-toplevel

    m = config.model
    if m.name != "vqgan":
        raise ValueError(f"--peer=taming needs taming's autoencoder (config.model.name='vqgan'), "
                         f"not {m.name!r}.")
    torch.manual_seed(0)
    ddconfig = dict(double_z=False, z_channels=m.z_channels, resolution=m.resolution,
                    in_channels=m.in_channels, out_ch=m.out_ch, ch=m.ch, ch_mult=list(m.ch_mult),
                    num_res_blocks=m.num_res_blocks, attn_resolutions=list(m.attn_resolutions),
                    dropout=m.dropout)
    return torch.nn.ModuleDict({
        "encoder": taming_model.Encoder(**ddconfig),
        "decoder": taming_model.Decoder(**ddconfig),
        "quantize": taming_quantize.VectorQuantizer2(config.quantizer.num_codes, m.embed_dim,
                                                     beta=float(config.quantizer.beta)),
        "quant_conv": torch.nn.Conv2d(m.z_channels, m.embed_dim, 1),
        "post_quant_conv": torch.nn.Conv2d(m.embed_dim, m.z_channels, 1),
    })


def taming_forward(modules, images):
    """`VQModel.forward`: (reconstruction, codebook loss)."""
    quantized, vq_loss, _ = modules["quantize"](modules["quant_conv"](modules["encoder"](images)))
    return modules["decoder"](modules["post_quant_conv"](quantized)), vq_loss


def taming_perceptual_loss(config):
    """taming's `VQLPIPSWithDiscriminator` for the config's loss and discriminator, its LPIPS
    built with random VGG and head weights (taming's constructor downloads ImageNet's)."""
    from taming.modules.losses import lpips as taming_lpips  # pylint: disable=import-outside-toplevel
    from taming.modules.losses import vqperceptual  # pylint: disable=import-outside-toplevel

    if config.disc.norm != "batch" or config.loss.gan_loss != "hinge":
        raise ValueError("--peer=taming's full step is taming's loss: config.disc.norm='batch' and "
                         "config.loss.gan_loss='hinge'.")
    import torchvision  # pylint: disable=import-outside-toplevel
    models, load = taming_lpips.models, taming_lpips.LPIPS.load_from_pretrained
    taming_lpips.models = types.SimpleNamespace(vgg16=lambda pretrained=True: torchvision.models.vgg16(weights=None))
    taming_lpips.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None
    try:
        return vqperceptual.VQLPIPSWithDiscriminator(
            disc_start=0, codebook_weight=1.0, disc_num_layers=int(config.disc.n_layers),
            disc_in_channels=int(config.model.out_ch), disc_weight=float(config.loss.disc_weight),
            perceptual_weight=float(config.loss.perceptual_weight), disc_ndf=int(config.disc.ndf),
            disc_loss="hinge")
    finally:
        taming_lpips.models, taming_lpips.LPIPS.load_from_pretrained = models, load


def time_taming(label: str, step: Callable, batch: int) -> dict:
    seconds, _ = median_step_seconds(step, None, _STEPS.value)
    result = {"images_per_sec": batch / seconds, "step_ms": 1e3 * seconds,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if _PROFILE.value:
        result["profile_ms"] = op_profile.torch_profile(step, _PROFILE.value)
    print(f"  taming {label} (PyTorch {torch.__version__}, {result['threads']} threads): "
          f"{result['images_per_sec']:.1f} images/s ({result['step_ms']:.0f} ms per step)")
    return result


def bench_taming(config) -> dict:
    """taming's autoencoder + learned codebook trained with L1 + VQ loss and Adam."""
    modules = taming_modules(config)
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-4,
                                 betas=(float(config.optim.b1), float(config.optim.b2)))
    batch, size, _, channels = image_shape(config)
    images = torch.rand(batch, channels, size, size) * 2 - 1

    def step(_):
        reconstruction, vq_loss = taming_forward(modules, images)
        loss = torch.abs(images - reconstruction).mean() + vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    result = time_taming("L1 + VQ step", step, batch)
    result["params"] = sum(p.numel() for name, p in modules.named_parameters() if not name.startswith("quantize"))
    return result


def bench_taming_full(config) -> dict:
    """taming's whole `VQModel.training_step` as Lightning runs it, the discriminator active:
    for the autoencoder's optimizer, forward, `VQLPIPSWithDiscriminator` (L1 + LPIPS, the
    adaptive weight through `torch.autograd.grad`, hinge generator loss), backward, Adam; then
    for the discriminator's, the autoencoder forward again, the loss again (LPIPS included, as
    taming computes it for both optimizers), the discriminator's backward, Adam."""
    modules = taming_modules(config)
    loss = taming_perceptual_loss(config).train()
    loss.perceptual_loss.eval()  # as taming: LPIPS is always in eval mode
    opt_ae = torch.optim.Adam(modules.parameters(), lr=1e-4, betas=(float(config.optim.b1), float(config.optim.b2)))
    opt_disc = torch.optim.Adam(loss.discriminator.parameters(), lr=1e-4,
                                betas=(float(config.optim_d.b1), float(config.optim_d.b2)))
    last_layer = modules["decoder"].conv_out.weight
    batch, size, _, channels = image_shape(config)
    images = torch.rand(batch, channels, size, size) * 2 - 1

    def step(_):
        reconstruction, vq_loss = taming_forward(modules, images)
        ae_loss, _ = loss(vq_loss, images, reconstruction, 0, 1, last_layer=last_layer, split="train")
        opt_ae.zero_grad(set_to_none=True)
        ae_loss.backward()
        opt_ae.step()
        reconstruction, vq_loss = taming_forward(modules, images)
        disc_loss, _ = loss(vq_loss, images, reconstruction, 1, 1, last_layer=last_layer, split="train")
        opt_disc.zero_grad(set_to_none=True)
        disc_loss.backward()
        opt_disc.step()

    result = time_taming("full step (L1 + LPIPS + discriminator)", step, batch)
    result["disc_params"] = sum(p.numel() for p in loss.discriminator.parameters())
    return result


def main(argv):
    del argv
    config = _CONFIG.value
    device = jax.local_devices()[0]
    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    print(f"{config_file}, batch {config.data.batch_size}, on {device.device_kind} "
          f"({device.platform}), jax {jax.__version__}, model dtype "
          f"{config.model.get('dtype', 'float32')}, CPU convolutions "
          f"{config.train.get('cpu_convolutions', 'ynnpack')}")
    report = {"config": config_file,
              "batch_size": int(config.data.batch_size), "device": device.device_kind,
              "jax": jax.__version__, "model_dtype": config.model.get("dtype", "float32")}
    report["config_step"] = bench_vqjax(config, "config's step")
    report.update(images_per_sec=report["config_step"]["images_per_sec"],
                  compile_s=report["config_step"]["compile_s"],
                  peer_images_per_sec=None, ratio=None)
    if _PEER.value == "taming":
        matched = bench_vqjax(peer_loss_config(config), "L1 + VQ step (the peer's loss)")
        peer = bench_taming(config)
        if peer["params"] != matched["params"]:
            raise AssertionError(f"The peer has {peer['params']} parameters and vqjax "
                                 f"{matched['params']}: not the same architecture.")
        report.update(matched_step=matched, peer=peer,
                      images_per_sec=matched["images_per_sec"], compile_s=matched["compile_s"],
                      peer_images_per_sec=peer["images_per_sec"],
                      ratio=matched["images_per_sec"] / peer["images_per_sec"])
        print(f"vqjax / taming, L1 + VQ step: {report['ratio']:.2f}x "
              f"({matched['images_per_sec']:.1f} vs {peer['images_per_sec']:.1f} images/s, "
              f"same {peer['params'] / 1e6:.2f} M parameters)")
        if config.family == "vqgan":
            full = bench_taming_full(config)
            ours = report["config_step"]
            if full["disc_params"] != ours["disc_params"]:
                raise AssertionError(f"taming's discriminator has {full['disc_params']} parameters "
                                     f"and vqjax's {ours['disc_params']}: not the same architecture.")
            report.update(peer_full_step=full, full_ratio=ours["images_per_sec"] / full["images_per_sec"])
            print(f"vqjax config's step / taming full step: {report['full_ratio']:.2f}x "
                  f"({ours['images_per_sec']:.1f} vs {full['images_per_sec']:.1f} images/s)")
    if _PROFILE.value:
        columns = {"vqjax config's step": report["config_step"]["profile_ms"]}
        if _PEER.value:
            columns = {"vqjax L1 + VQ": report["matched_step"]["profile_ms"],
                       "taming L1 + VQ": report["peer"]["profile_ms"], **columns}
            if "peer_full_step" in report:
                columns["taming full step"] = report["peer_full_step"]["profile_ms"]
        print(f"Profile, {_PROFILE.value} traced steps (bench/op_profile.py), by kind of work:")
        op_profile.print_table({name: profile["by_kind"] for name, profile in columns.items()}, op_profile.KINDS)
        print("and by network (vqjax only: PyTorch's operators carry no module names):")
        op_profile.print_table({name: profile["by_part"] for name, profile in columns.items()
                                if not name.startswith("taming")}, op_profile.PARTS)
    if _JSON.value:
        write_json(_JSON.value, report)


if __name__ == "__main__":
    app.run(main)
