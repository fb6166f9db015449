"""taming-transformers and latent-diffusion VQ models -> a vqjax model directory.

  python -m vqjax.convert taming --ckpt last.ckpt --config model.yaml --out DIR

reads a Lightning checkpoint (its `state_dict`; a plain `.pth` state dict works too) and the
YAML it was trained with (`model.target`, `model.params.{embed_dim, n_embed, ddconfig,
lossconfig}`), and writes DIR in the layout of a training workdir, so `vqjax.pretrained.load`
and `config.init_from` read it like any run of ours:

  DIR/config.json            a complete vqjax VQGAN config with the checkpoint's sizes and loss settings
  DIR/checkpoints/0/         Orbax: a train state without optimizer state: params {net,
                             quantizer}, extra {quantizer, and the discriminator when present}
  DIR/lpips.msgpack          the LPIPS weights the checkpoint carries (config.loss.lpips_path)

Models: taming's VQModel (VectorQuantizer2), EMAVQ (EMAVectorQuantizer), GumbelVQ
(GumbelQuantize), and latent-diffusion's VQModel / VQModelInterface first stages (vq-f4, f8,
f16), including a whole LDM checkpoint whose tensors sit under `first_stage_model.`.

Every array of the vqjax model is looked up by its taming name and checked for shape, and every
tensor of the checkpoint's autoencoder must be used: a YAML that does not describe the
checkpoint stops with the tensor's name and both shapes instead of leaving weights random.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import quantizers
from vqjax.core import checkpoints, paths
from vqjax.families import defaults
from vqjax.nets import build as nets
from vqjax.convert.lpips import lpips_params_from_torch
from vqjax.convert.torch_io import fill_from_torch, load_torch_state, save_params, to_flax

# model.target (last component) -> vqjax quantizer kind.
QUANTIZER_OF_TARGET = {
    "VQModel": "vq",  # taming.models.vqgan / ldm.models.autoencoder: VectorQuantizer2
    "VQModelInterface": "vq",  # ldm's first stage inside an LDM
    "VQNoDiscModel": "vq",
    "EMAVQ": "ema",  # taming's EMAVectorQuantizer
    "GumbelVQ": "gumbel",
}
# ddconfig keys with the value the vqjax networks implement; other values are refused.
FIXED_DDCONFIG = {"double_z": False, "give_pre_end": False, "tanh_out": False,
                  "resamp_with_conv": True, "use_linear_attn": False, "attn_type": "vanilla"}
MODEL_DDCONFIG = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels",
                  "resolution", "in_channels", "out_ch", "dropout")
TAMING_GAN_LOSS = {"hinge": "hinge", "vanilla": "non_saturating"}
AUTOENCODER_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")


# ----------------------------------------------------------------------------------------
# The YAML config -> a vqjax config.


def read_yaml(path: str) -> dict:
    """`model` of a taming / latent-diffusion YAML as a dict with `target` and `params`."""
    try:
        import yaml
    except ImportError:
        raise SystemExit("Reading the YAML config needs PyYAML: pip install 'vqjax[interop]'.") from None
    if not paths.is_file(path):
        raise ValueError(f"--config {path} is not a file.")
    raw = yaml.safe_load(paths.read_text(path))
    model = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(model, dict) or "ddconfig" not in model.get("params", {}):
        raise ValueError(f"{path} has no model.params.ddconfig; pass the YAML config the checkpoint "
                         "was trained with (taming's configs/*.yaml or the model.yaml next to the .ckpt).")
    return model


def _target_name(target: str) -> str:
    return str(target or "VQModel").rsplit(".", 1)[-1]


def vqjax_config(model_yaml: dict):
    """A complete vqjax VQGAN config (taming's defaults from `vqgan_base`) with the model,
    quantizer and loss settings of `model_yaml`. Returns (config, notes, whether the
    checkpoint's discriminator is one vqjax can import)."""
    params = model_yaml["params"]
    target = _target_name(model_yaml.get("target"))
    if target not in QUANTIZER_OF_TARGET:
        raise ValueError(f"model.target is {model_yaml.get('target')!r}; vqjax converts "
                         f"{sorted(QUANTIZER_OF_TARGET)} (taming-transformers / latent-diffusion).")
    if params.get("remap"):
        raise ValueError(f"model.params.remap is {params['remap']!r}: codes remapped to a used subset "
                         "are not supported; convert a model trained without remap.")
    ddconfig = dict(params["ddconfig"])
    for key, value in ddconfig.items():
        if key in FIXED_DDCONFIG and value != FIXED_DDCONFIG[key]:
            raise ValueError(f"ddconfig.{key} is {value!r}; vqjax's VQGAN networks implement "
                             f"{key}={FIXED_DDCONFIG[key]!r} only.")
        if key not in FIXED_DDCONFIG and key not in MODEL_DDCONFIG:
            raise ValueError(f"ddconfig.{key} is not a setting vqjax knows; the known ones are "
                             f"{sorted(MODEL_DDCONFIG + tuple(FIXED_DDCONFIG))}.")

    config = defaults.vqgan_base()
    config.model.update({k: tuple(v) if isinstance(v, list) else v
                         for k, v in ddconfig.items() if k in MODEL_DDCONFIG})
    config.model.embed_dim = int(params["embed_dim"])
    config.data.image_size = int(ddconfig.get("resolution", config.model.resolution))
    config.data.channels = int(ddconfig.get("in_channels", 3))
    config.quantizer.kind = QUANTIZER_OF_TARGET[target]
    config.quantizer.num_codes = int(params["n_embed"])
    # taming has no dead-code restarts; fine-tuning keeps its behaviour unless asked.
    config.quantizer.dead_code_threshold = 0.0
    config.quantizer.legacy_beta = True  # VectorQuantizer2's default, which every release used
    if config.quantizer.kind == "ema":
        config.quantizer.decay = float(params.get("decay", 0.99))
        config.quantizer.epsilon = float(params.get("eps", 1e-5))
    if config.quantizer.kind == "gumbel":
        config.quantizer.kl_weight = float(params.get("kl_weight", 1e-8))
        config.quantizer.init = "uniform"
    notes, disc_importable = _loss_settings(config, params.get("lossconfig") or {})
    return config, notes, disc_importable


def _loss_settings(config, lossconfig: dict) -> tuple[list[str], bool]:
    """VQLPIPSWithDiscriminator's settings -> config.loss / config.disc; returns notes on what
    has no vqjax equivalent (relevant only to fine-tuning, not to using the model) and whether
    the discriminator can be imported."""
    notes, disc_importable = [], True
    if "VQLPIPSWithDiscriminator" not in str(lossconfig.get("target", "")):
        config.loss.perceptual_weight = 0.0
        notes.append(f"loss {lossconfig.get('target', 'none')!r} is not taming's "
                     "VQLPIPSWithDiscriminator; the config keeps vqjax's VQGAN loss defaults.")
        return notes, False
    p = lossconfig.get("params", {})
    config.loss.disc_start = int(p.get("disc_start", 0))
    config.loss.disc_weight = float(p.get("disc_weight", 1.0)) * float(p.get("disc_factor", 1.0))
    config.loss.perceptual_weight = float(p.get("perceptual_weight", 1.0))
    disc_loss = p.get("disc_loss", "hinge")
    if disc_loss not in TAMING_GAN_LOSS:
        raise ValueError(f"lossconfig.params.disc_loss is {disc_loss!r}; vqjax has {sorted(TAMING_GAN_LOSS)}.")
    config.loss.gan_loss = TAMING_GAN_LOSS[disc_loss]
    config.disc.n_layers = int(p.get("disc_num_layers", 3))
    config.disc.ndf = int(p.get("disc_ndf", 64))
    if p.get("use_actnorm", False):
        notes.append("the discriminator uses ActNorm, which vqjax does not implement; it is not imported.")
        disc_importable = False
    if p.get("disc_conditional", False) or int(p.get("disc_in_channels", 3)) != config.data.channels:
        notes.append("the discriminator is conditional; vqjax's is not, so it is not imported.")
        disc_importable = False
    for key, default in (("codebook_weight", 1.0), ("pixelloss_weight", 1.0)):
        if float(p.get(key, default)) != default:
            notes.append(f"lossconfig {key}={p[key]} has no vqjax setting (vqjax uses {default}).")
    return notes, disc_importable


# ----------------------------------------------------------------------------------------
# Names: vqjax parameter paths -> taming tensor names.


def autoencoder_tensor_name(path: tuple[str, ...]) -> str:
    """(encoder, down_1_block_0, conv1, kernel) -> encoder.down.1.block.0.conv1.weight."""
    *modules, leaf = path
    name = ".".join(modules)
    name = re.sub(r"(down|up)_(\d+)_(block|attn)_(\d+)", r"\1.\2.\3.\4", name)
    name = re.sub(r"(down|up)_(\d+)_(downsample|upsample)", r"\1.\2.\3", name)
    return f"{name}.{'bias' if leaf == 'bias' else 'weight'}"


def discriminator_tensor_name(path: tuple[str, ...], n_layers: int) -> str:
    """conv_0 -> main.0; conv_n -> main.{3n-1}, norm_n -> main.{3n} (n >= 1);
    conv_out -> main.{3 n_layers + 2}: the indices of taming's NLayerDiscriminator.main."""
    module, leaf = path
    if module == "conv_out":
        index = 3 * n_layers + 2
    else:
        kind, n = module.split("_")
        index = 0 if n == "0" else 3 * int(n) - (1 if kind == "conv" else 0)
    torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}[leaf]
    return f"loss.discriminator.main.{index}.{torch_leaf}"


def fill_tree(expected: Any, state: dict, tensor_name: Callable, source: str, used: set) -> Any:
    return fill_from_torch(expected, state, tensor_name, source, used=used,
                           hint="is the YAML the config this checkpoint was trained with?")


# ----------------------------------------------------------------------------------------
# Checkpoint -> arrays.


def strip_prefix(state: dict) -> dict:
    """A whole LDM checkpoint keeps its first stage under `first_stage_model.`."""
    if "encoder.conv_in.weight" not in state and "first_stage_model.encoder.conv_in.weight" in state:
        prefix = "first_stage_model."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def quantizer_from_torch(state: dict, config, source: str, used: set) -> dict:
    """The variables {'params', 'state'} of the checkpoint's quantizer, for the quantizer
    `config.quantizer` builds."""
    kind, num_codes, dim = config.quantizer.kind, config.quantizer.num_codes, config.model.embed_dim
    embed_name = "quantize.embed.weight" if kind == "gumbel" else "quantize.embedding.weight"
    names = {"embedding": embed_name}
    if kind == "ema":
        names.update(cluster_size="quantize.embedding.cluster_size", embed_sum="quantize.embedding.embed_avg")
    shapes = {"embedding": (num_codes, dim), "cluster_size": (num_codes,), "embed_sum": (num_codes, dim)}
    if kind == "gumbel":
        # GumbelQuantize.proj: a 1x1 conv from the quant_conv output to one logit per code.
        z_channels = config.model.z_channels
        names.update(proj_kernel="quantize.proj.weight", proj_bias="quantize.proj.bias")
        shapes.update(proj_kernel=(num_codes, z_channels, 1, 1), proj_bias=(num_codes,))
    arrays = {}
    for field, name in names.items():
        if name not in state:
            raise ValueError(f"{source} has no tensor {name} (shape {shapes[field]}); model.target in the "
                             "YAML names another quantizer than the checkpoint's.")
        if tuple(state[name].shape) != shapes[field]:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(state[name].shape)} but the YAML "
                             f"config (n_embed, embed_dim) needs {shapes[field]}.")
        arrays[field] = np.asarray(state[name], np.float32)
        used.add(name)
    embedding = jnp.asarray(arrays["embedding"])
    if kind == "ema":
        codebook = quantizers.CodebookState.from_embedding(embedding, config.quantizer.initial_count)
        return {"params": {}, "state": codebook.replace(cluster_size=jnp.asarray(arrays["cluster_size"]),
                                                        embed_sum=jnp.asarray(arrays["embed_sum"]))}
    if kind == "gumbel":
        proj = {"kernel": to_flax(arrays["proj_kernel"]), "bias": arrays["proj_bias"]}
        return {"params": {"proj": proj, "codebook": embedding}, "state": {}}
    return {"params": {"codebook": embedding}, "state": quantizers.CodeUsage.fresh(num_codes)}


def discriminator_from_torch(state: dict, config, source: str, used: set):
    """(disc params, batch stats) from `loss.discriminator.*`, or None when absent or not importable."""
    from vqjax.families import vqgan

    if not any(k.startswith("loss.discriminator.") for k in state):
        return None
    disc = vqgan.build_discriminator(config.disc)
    size = config.model.resolution
    expected = jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((1, size, size, config.data.channels)))
    name = lambda path: discriminator_tensor_name(path, config.disc.n_layers)
    return (fill_tree(expected["params"], state, name, source, used),
            fill_tree(expected.get("batch_stats", {}), state, name, source, used))


def lpips_from_torch(state: dict, used: set):
    prefix = "loss.perceptual_loss."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        return None
    params = lpips_params_from_torch(sub, sub)
    used.update(k for k in state if k.startswith(prefix))
    return params


def convert_state(state: dict, config, *, with_loss: bool = True, disc_importable: bool = True,
                  source: str = "the checkpoint") -> dict:
    """The vqjax arrays of a taming state dict as a train state without optimizer:
    {'params': {'net', 'quantizer'}, 'extra': {'quantizer', 'disc_params', 'disc_batch_stats'}},
    plus 'lpips' (LPIPS params), the discriminator and LPIPS when present and `with_loss`."""
    state = strip_prefix(state)
    model = nets.build_autoencoder(**config.model)
    size = config.model.resolution
    images = jnp.zeros((1, size, size, config.data.channels))
    expected = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    used: set = set()
    net = fill_tree(expected, state, autoencoder_tensor_name, source, used)
    variables = quantizer_from_torch(state, config, source, used)
    tree = {"params": {"net": net, "quantizer": variables["params"]}, "extra": {"quantizer": variables["state"]}}
    left = sorted(k for k in state if k.startswith(AUTOENCODER_PREFIXES) and k not in used)
    if left:
        raise ValueError(f"{source} has {len(left)} autoencoder tensors the YAML config has no place for "
                         f"(first: {left[0]}, shape {tuple(state[left[0]].shape)}); the YAML describes "
                         "a smaller model than the checkpoint.")
    if with_loss:
        disc = discriminator_from_torch(state, config, source, used) if disc_importable else None
        if disc is not None:
            tree["extra"]["disc_params"], tree["extra"]["disc_batch_stats"] = disc
        perceptual = lpips_from_torch(state, used)
        if perceptual is not None:
            tree["lpips"] = perceptual
    return tree


# ----------------------------------------------------------------------------------------
# The command.


# A model directory's entries; a directory with config.json holds a complete model.
MODEL_ENTRIES = ("checkpoints", "lpips.msgpack", "conversion.json", "config.json")


def move_model_into(staging, out) -> None:
    """Replaces the model entries of `out` by those of `staging`: the old config.json leaves
    first and the new one arrives last, so that at every moment `out` holds either a complete
    model or none (the old entries wait in `out/.replaced` until the new ones are in); other
    files in `out` stay."""
    aside = out / ".replaced"
    paths.remove_tree(aside)
    for name in reversed(MODEL_ENTRIES):
        if (out / name).exists():
            aside.mkdir(parents=True, exist_ok=True)
            (out / name).rename(aside / name)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_ENTRIES:
        if (staging / name).exists():
            (staging / name).rename(out / name)
    paths.remove_tree(aside)
    paths.remove_tree(staging)


def convert_checkpoint(ckpt: str, config_path: str, out: str, *, with_loss: bool = True,
                       overwrite: bool = False) -> str:
    """Writes the model directory `out`; returns a summary line for the command."""
    existing = paths.join(out, "checkpoints")
    if existing.is_dir() and any(existing.iterdir()) and not overwrite:
        raise ValueError(f"{out} already holds a model; pass --overwrite to replace it, or choose "
                         "another --out.")
    config, notes, disc_importable = vqjax_config(read_yaml(config_path))
    tree = convert_state(load_torch_state(ckpt), config, with_loss=with_loss,
                         disc_importable=disc_importable, source=ckpt)
    # The new model is written beside `out` and moved in once complete, so a failed or killed
    # conversion leaves the old model whole.
    final = paths.resolve(out)
    staging = final.with_name(final.name + ".converting")
    paths.remove_tree(staging)  # what a killed conversion left
    paths.makedirs(staging)
    perceptual = tree.pop("lpips", None)
    if perceptual is not None:
        config.loss.lpips_path = os.fspath(final / "lpips.msgpack")  # where it will be
        save_params(perceptual, staging / "lpips.msgpack")
    if with_loss and "disc_params" not in tree["extra"]:
        notes.append("no discriminator imported: fine-tuning from this directory trains one from scratch.")
    checkpoints.save_tree(os.fspath(staging), 0, jax.tree.map(np.asarray, tree))
    checkpoints.write_config(os.fspath(staging), config)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree["params"]["net"]))
    imported = ["autoencoder", "quantizer"] + [k for k in ("disc_params", "disc_batch_stats") if k in tree["extra"]]
    paths.write_json(staging / "conversion.json",
                     {"ckpt": os.fspath(paths.resolve(ckpt)), "config": os.fspath(paths.resolve(config_path)),
                      "imported": imported + (["lpips"] if perceptual is not None else []), "notes": notes})
    move_model_into(staging, final)
    lines = [f"Wrote {out}: {count:,} autoencoder parameters, {config.quantizer.num_codes} codes "
             f"({config.quantizer.kind}), imported {', '.join(imported)}"
             + (" and LPIPS" if perceptual is not None else "") + "."]
    lines += [f"note: {n}" for n in notes]
    lines.append(f"Use it with vqjax.pretrained.load({out!r}) or --config.init_from={out}.")
    return "\n".join(lines)
