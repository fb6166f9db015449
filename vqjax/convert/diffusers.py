"""diffusers `UNet2DModel` weights -> vqjax's U-Net (`vqjax.nets.unet.UNet`).

diffusers holds the released DDPM weights (google/ddpm-cifar10-32, -celebahq-256, -church-256,
-bedroom-256) in its `UNet2DModel` format: a `config.json` and a `diffusion_pytorch_model`
safetensors (or pickle) file. `unet_kwargs` maps the config onto the U-Net's fields (and refuses
the options vqjax's U-Net does not have), `unet_params` fills every parameter from the tensors,
checking each shape, so a config that does not describe the weights stops with the tensor's name
and both shapes.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from vqjax.convert.torch_io import fill_from_torch

# diffusers config entries with the value vqjax's U-Net implements; others are refused.
FIXED_UNET_CONFIG = {
    "time_embedding_type": "positional", "time_embedding_dim": None, "mid_block_type": "UNetMidBlock2D",
    "act_fn": "silu", "add_attention": True, "class_embed_type": None, "center_input_sample": False,
    "mid_block_scale_factor": 1,
}
# Attention tensors as diffusers saved them before 0.14 (the google/ddpm-* releases).
DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def unet_kwargs(config: dict, source: str = "the diffusers config") -> dict:
    """`UNet` fields for a diffusers `UNet2DModel` config (its config.json as a dict)."""
    for key, value in FIXED_UNET_CONFIG.items():
        if config.get(key, value) != value:
            raise ValueError(f"{source}: {key}={config[key]!r} is not supported by vqjax's U-Net "
                             f"(it implements {key}={value!r}).")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    with_attention = [t.startswith("Attn") for t in down]
    if [t.startswith("Attn") for t in reversed(up)] != with_attention or not all(
            t in ("DownBlock2D", "AttnDownBlock2D") for t in down) or not all(
            t in ("UpBlock2D", "AttnUpBlock2D") for t in up):
        raise ValueError(f"{source}: down_block_types {down} / up_block_types {up} are not a DDPM U-Net "
                         "(DownBlock2D / AttnDownBlock2D levels mirrored by UpBlock2D / AttnUpBlock2D).")
    resample = {config.get("downsample_type", "conv"), config.get("upsample_type", "conv")}
    if resample not in ({"conv"}, {"resnet"}):
        raise ValueError(f"{source}: downsample_type and upsample_type must both be 'conv' or both "
                         f"'resnet', not {sorted(resample)}.")
    scale_shift = config.get("resnet_time_scale_shift", "default") == "scale_shift"
    groups = config.get("norm_num_groups", 32)
    if scale_shift and config.get("attn_norm_num_groups") != groups:
        # diffusers' middle block drops its attention's GroupNorm in this case; ADM has it.
        raise ValueError(f"{source}: with resnet_time_scale_shift='scale_shift', attn_norm_num_groups "
                         f"must equal norm_num_groups ({groups}).")
    channels = list(config["block_out_channels"])
    if any(c % channels[0] for c in channels):
        raise ValueError(f"{source}: block_out_channels {channels} are not multiples of the first.")
    size = config.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    if not size:
        raise ValueError(f"{source} has no sample_size; the U-Net places attention by resolution.")
    head_dim = config.get("attention_head_dim")
    num_classes = config.get("num_class_embeds") or 0
    return dict(
        out_channels=config.get("out_channels", 3),
        channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=config.get("layers_per_block", 2),
        attention_resolutions=tuple(size // 2 ** level for level, a in enumerate(with_attention) if a),
        dropout=float(config.get("dropout", 0.0)),
        num_heads=1,
        head_channels=head_dim if head_dim else -1,
        scale_shift_norm=scale_shift,
        resblock_updown=resample == {"resnet"},
        num_classes=num_classes,
        downsample_padding=config.get("downsample_padding", 1),
        flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
        freq_shift=float(config.get("freq_shift", 0)),
        norm_groups=groups,
        norm_eps=float(config.get("norm_eps", 1e-5)),
    )


_RES_LEAVES = {"emb_proj": "time_emb_proj", "shortcut": "conv_shortcut"}
_ATTN_LEAVES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP = {"conv_in": "conv_in", "time_embed_1": "time_embedding.linear_1",
        "time_embed_2": "time_embedding.linear_2", "norm_out": "conv_norm_out", "conv_out": "conv_out",
        "mid_res_1": "mid_block.resnets.0", "mid_res_2": "mid_block.resnets.1",
        "mid_attn": "mid_block.attentions.0"}


def unet_tensor_name(path: tuple[str, ...], num_levels: int) -> str:
    """(down_1_attn_0, q, kernel) -> down_blocks.1.attentions.0.to_q.weight; up levels count
    from the bottom in vqjax (level = resolution) and from the top in diffusers."""
    *modules, leaf = path
    names = []
    for module in modules:
        match = re.fullmatch(r"(down|up)_(\d+)_(res|attn|downsample|upsample)(?:_(\d+))?", module)
        if match:
            side, level, kind, index = match.groups()
            level = int(level) if side == "down" else num_levels - 1 - int(level)
            part = {"res": f"resnets.{index}", "attn": f"attentions.{index}",
                    "downsample": "downsamplers.0", "upsample": "upsamplers.0"}[kind]
            names.append(f"{side}_blocks.{level}.{part}")
        elif module in _TOP:
            names.append(_TOP[module])
        else:
            inside_attention = bool(names) and "attentions" in names[-1]
            names.append((_ATTN_LEAVES if inside_attention else _RES_LEAVES).get(module, module))
    return ".".join(names) + (".bias" if leaf == "bias" else ".weight")


def rename_deprecated_attention(state: dict) -> dict:
    """Tensor names of diffusers < 0.14 (query/key/value/proj_attn) -> today's."""
    renamed = {}
    for name, tensor in state.items():
        head, _, last = name.rpartition(".")
        module_path, _, module = head.rpartition(".")
        if "attentions." in name and module in DEPRECATED_ATTENTION_NAMES:
            name = f"{module_path}.{DEPRECATED_ATTENTION_NAMES[module]}.{last}"
        renamed[name] = tensor
    return renamed


def unet_params(state: dict, expected: Any, kwargs: dict, source: str) -> dict:
    """The U-Net's params (shaped like `expected`) from a `UNet2DModel` state dict. Every tensor
    of the state dict must be used."""
    state = rename_deprecated_attention({k: np.asarray(v, np.float32) for k, v in state.items()})
    num_levels = len(kwargs["channel_mult"])
    used: set = set()
    hint = "is the config.json the one saved with these weights?"
    expected = dict(expected)
    class_embed = expected.pop("class_embed", None)
    params = fill_from_torch(expected, state, lambda path: unet_tensor_name(path, num_levels), source,
                             hint, used)
    if class_embed is not None:
        # diffusers has one row per class; vqjax adds the "no class" row of classifier-free guidance.
        table = state.get("class_embedding.weight")
        want = (class_embed["embedding"].shape[0] - 1, class_embed["embedding"].shape[1])
        if table is None or table.shape != want:
            raise ValueError(f"{source}: tensor class_embedding.weight has shape "
                             f"{None if table is None else table.shape}, expected {want}; {hint}")
        params["class_embed"] = {"embedding": np.concatenate([table, np.zeros_like(table[:1])])}
        used.add("class_embedding.weight")
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{source} has tensors the U-Net of its config does not use: "
                         f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}; {hint}")
    return jax.tree.map(np.asarray, params)


# ----------------------------------------------------------------------------------------
# A DDPM pipeline directory -> a vqjax diffusion directory.

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "sqrt_linear", "squaredcos_cap_v2": "cosine"}
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")


def diffusion_settings(scheduler: dict, source: str) -> dict:
    """`config.diffusion` fields from a diffusers scheduler_config.json."""
    if scheduler.get("trained_betas") is not None:
        raise ValueError(f"{source}: trained_betas are not supported; vqjax's schedules are "
                         f"{', '.join(BETA_SCHEDULES)}.")
    schedule = scheduler.get("beta_schedule", "linear")
    prediction = scheduler.get("prediction_type", "epsilon")
    variance = scheduler.get("variance_type", "fixed_small")
    for value, known, key in ((schedule, BETA_SCHEDULES, "beta_schedule"), (prediction, PREDICTION_TYPES, "prediction_type"),
                              (variance, VARIANCE_TYPES, "variance_type")):
        if value not in known:
            raise ValueError(f"{source}: {key}={value!r} is not supported; vqjax takes {', '.join(known)}.")
    return dict(schedule=BETA_SCHEDULES[schedule], num_timesteps=int(scheduler.get("num_train_timesteps", 1000)),
                beta_start=float(scheduler.get("beta_start", 1e-4)), beta_end=float(scheduler.get("beta_end", 0.02)),
                prediction=PREDICTION_TYPES[prediction], variance=variance,
                clip_x0=bool(scheduler.get("clip_sample", True)))


def _read_unet_state(unet_dir, source: str) -> dict:
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    if weights.exists():
        from safetensors.numpy import load as load_safetensors  # a tensor format: no code runs on load

        return load_safetensors(weights.read_bytes())
    pickled = unet_dir / "diffusion_pytorch_model.bin"
    if pickled.exists():
        from vqjax.convert.torch_io import load_torch_state

        return load_torch_state(str(pickled))
    raise ValueError(f"{source} has no unet/diffusion_pytorch_model.safetensors (or .bin); pass the directory "
                     "DDPMPipeline.save_pretrained wrote (it holds unet/ and scheduler/).")


def convert_pipeline(pipeline: str, out: str, *, overwrite: bool = False) -> str:
    """Writes the vqjax diffusion directory `out` from a diffusers DDPM pipeline directory;
    returns a summary line for the command."""
    from vqjax.convert.taming import move_model_into
    from vqjax.core import checkpoints, paths
    from vqjax.families import defaults
    from vqjax.inference import diffusion as diffusion_lib

    root = paths.resolve(pipeline)
    if not (root / "unet" / "config.json").exists():
        raise ValueError(f"{pipeline} has no unet/config.json; pass a diffusers pipeline directory (as "
                         "DDPMPipeline.save_pretrained writes it and the google/ddpm-* releases ship it).")
    existing = paths.join(out, "checkpoints")
    if existing.is_dir() and any(existing.iterdir()) and not overwrite:
        raise ValueError(f"{out} already holds a model; pass --overwrite to replace it, or choose another --out.")
    unet_config = paths.read_json(root / "unet" / "config.json")
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler = paths.read_json(scheduler_path) if scheduler_path.exists() else {}
    kwargs = unet_kwargs(unet_config, f"{pipeline}/unet/config.json")
    settings = diffusion_settings(scheduler, f"{pipeline}/scheduler/scheduler_config.json")
    channels = kwargs["out_channels"] // (2 if settings["variance"] == "learned_range" else 1)
    if unet_config.get("in_channels", 3) != channels:
        raise ValueError(f"{pipeline}: the U-Net takes {unet_config.get('in_channels')} input channels for "
                         f"{channels} output channels; only unconditioned DDPM pipelines convert.")

    config = defaults.diffusion_base()
    config.model.update({k: v for k, v in kwargs.items() if k != "out_channels"})
    config.diffusion.update(settings)
    size = unet_config["sample_size"]
    config.data.update(image_size=size[0] if isinstance(size, (list, tuple)) else size, channels=channels)
    spec = diffusion_lib.DiffusionSpec.from_config(config.diffusion)
    model = diffusion_lib.build_unet(config.model, channels, spec)
    shape = diffusion_lib.image_shape_of(config)
    expected = jax.eval_shape(lambda: diffusion_lib.init_params(model, jax.random.key(0), shape, spec))
    params = unet_params(_read_unet_state(root / "unet", pipeline), expected, kwargs, f"{pipeline}/unet")

    final = paths.resolve(out)
    staging = final.with_name(final.name + ".converting")
    paths.remove_tree(staging)
    paths.makedirs(staging)
    checkpoints.save_tree(str(staging), 0, {"params": params})
    checkpoints.write_config(str(staging), config)
    paths.write_json(staging / "conversion.json", {"pipeline": str(root), "imported": ["unet", "scheduler"]})
    move_model_into(staging, final)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return (f"Wrote {out}: a {count:,}-parameter U-Net, T={settings['num_timesteps']} {settings['schedule']} "
            f"schedule, {settings['prediction']} prediction.\nUse it with vqjax.diffusion.load({out!r}).")
