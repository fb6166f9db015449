"""Shared helpers for the tests."""

import importlib
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "experiments", "configs")


def subprocess_env(num_devices: int = 1, **extra: str) -> dict:
    """The environment for an entry point run as a subprocess: this process's XLA flags
    (tests/conftest.py's included) with `num_devices` CPU devices instead of 4."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    if num_devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags), **extra)


# Config files that are not training experiments.
NOT_TRAINING = {"common.py", "evaluate.py"}


def _training_config_names():
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                  if f.endswith(".py") and not f.startswith("_") and f not in NOT_TRAINING)


def _family(name) -> str:
    return load_config(name).family


def config_names():
    """The tokenizer experiments' config files."""
    return [name for name in _training_config_names() if _family(name) in ("vqvae", "vqgan")]


def prior_config_names():
    """The prior (transformer) experiments' config files."""
    return [name for name in _training_config_names() if _family(name) == "prior"]


def diffusion_config_names():
    return [name for name in _training_config_names() if _family(name) == "diffusion"]


def load_config(name, arg=None):
    return importlib.import_module(f"experiments.configs.{name}").get_config(arg)


def random_transformer_params(model, seed: int):
    """Parameters drawn in numpy for the shapes of `model.init` (traced, never run: eager
    initialisation compiles every op). N(0, 0.3) weights, LayerNorm scales 1 + N(0, 0.3): the
    N(0, 0.02) initialisation gives near-uniform logits, these make every input matter (logit
    std ~2 over the vocabulary)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, model.seq_len), jnp.int32),
                            jnp.zeros((1,), jnp.int32))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        values = 0.3 * rng.standard_normal(leaf.shape)
        if jax.tree_util.keystr(path).endswith("['scale']"):
            values += 1.0
        return jnp.asarray(values, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_frozen_weights(shape_tree, seed: int = 0):
    """Random weights for a frozen network (LPIPS, the FID Inception) without an init to compile:
    non-negative kernels of mean 1 / fan-in, so activations keep their scale through 94 layers
    (LPIPS heads are non-negative anyway); vectors of ones (batch-norm variances must be
    positive)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)

    def leaf(s):
        if len(s.shape) == 1:
            return np.ones(s.shape, np.float32)
        return rng.uniform(0.0, 2.0 / np.prod(s.shape[:-1]), s.shape).astype(np.float32)

    return jax.tree.map(leaf, shape_tree)


def calibrated_fid_inception(seed: int, calibration, **options):
    """pytorch-fid's `InceptionV3(output_blocks=[3], **options)` with random weights, and the
    Inception3 under it (`fid_inception_v3` without its download). Random batch-norm affine terms
    and running statistics of `calibration` (NCHW) keep every layer near unit scale, so that the
    features of random weights are not all alike."""
    import torch
    from pytorch_fid import inception as fid
    from torchvision.models import inception_v3

    torch.manual_seed(seed)
    net = inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    original = fid.fid_inception_v3
    fid.fid_inception_v3 = lambda: net
    try:
        model = fid.InceptionV3(output_blocks=[3], **options)
    finally:
        fid.fid_inception_v3 = original
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: after one batch, that batch's statistics
        model.train()(calibration)
    return model.eval(), net
