"""Every quantizer kind where a quantizer is named (issue 20, item 7): a tokenizer trains with it
through the entry point's code path, `vqjax.pretrained.load` reads it back, its code maps decode
to what it reconstructs, the evaluation counts its bits, and a prior trains on its code maps
(residual VQ's stacked codes read as one sequence)."""

import json
import math
import os

import jax
import numpy as np
import pytest

import vqjax.pretrained
import vqjax.prior
from tests.helpers import load_config
from vqjax import quantizers
from vqjax.train import experiment

# What each kind needs beyond vqvae_quickstart:smoke (32 codes, 8-dimensional encoder outputs).
KIND_SETTINGS = {
    "fsq": dict(levels=(4, 8)),  # 32 codes on a 2-dimensional grid, projected in and out
    "lfq": {},  # 5 bits, projected
    "bsq": {},
    "cosine": dict(codebook_dim=4),
    "residual": dict(depth=3, stage="ema"),
    "simvq": {},
    "vq": {},
    "ema": {},
    "gumbel": dict(kl_weight=5e-4),
}
# The kinds the default suite trains end to end; CI's extended tier trains every kind.
DEFAULT_KINDS = ("fsq", "residual")


def _tokenizer_config(kind):
    config = load_config("vqvae_quickstart", "smoke")
    config.quantizer.kind = kind
    with config.unlocked():
        for field, value in KIND_SETTINGS[kind].items():
            config.quantizer[field] = value
    config.train.num_steps = 2
    return config


def test_every_registered_kind_has_settings_here():
    assert set(KIND_SETTINGS) == set(quantizers.QUANTIZERS)


@pytest.fixture(scope="module")
def tokenizer_runs(tmp_path_factory):
    """kind -> (config, workdir, final metrics), trained on first use."""
    runs = {}

    def run(kind):
        if kind not in runs:
            config = _tokenizer_config(kind)
            workdir = str(tmp_path_factory.mktemp(f"tokenizer_{kind}"))
            runs[kind] = (config, workdir, experiment.train_and_evaluate(config, workdir))
        return runs[kind]

    return run


def _kinds():
    return [kind if kind in DEFAULT_KINDS else pytest.param(kind, marks=pytest.mark.extended)
            for kind in sorted(KIND_SETTINGS)]


@pytest.mark.parametrize("kind", _kinds())
def test_a_tokenizer_trains_loads_and_decodes_its_codes(kind, tokenizer_runs):
    config, workdir, metrics = tokenizer_runs(kind)
    assert np.isfinite(metrics["recon_psnr"]) and np.isfinite(metrics["train_loss"])
    tokenizer = vqjax.pretrained.load(workdir)
    assert tokenizer.config.quantizer.kind == kind
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    z_q, indices = tokenizer.encode(images)
    index_tail = (config.quantizer.depth,) if kind == "residual" else ()
    assert indices.shape == (2, 8, 8, *index_tail) and tokenizer.index_tail == index_tail
    assert 0 <= int(indices.min()) and int(indices.max()) < tokenizer.num_codes
    # The code maps alone give back the reconstruction: decode(lookup(indices)) == decode(encode).
    np.testing.assert_allclose(tokenizer.decode_indices(indices), tokenizer.decode(z_q), rtol=1e-5, atol=1e-5)
    # Bits per pixel of the code maps: log2(K) for each of the 8 x 8 (x depth) codes of 32 x 32 pixels.
    codes_per_image = 64 * math.prod(index_tail)
    assert metrics["bits_per_pixel"] == pytest.approx(codes_per_image * math.log2(tokenizer.num_codes) / 1024)
    with pytest.raises(ValueError, match="pass integer code maps of shape"):
        tokenizer.decode_indices(np.zeros((2, 8, 8, *index_tail, 2), np.int32))


def test_fsq_codes_count_the_grid_and_the_preset_sizes_need_no_levels():
    config = _tokenizer_config("fsq")
    assert quantizers.build(config.quantizer, dim=8).num_codes == 32
    config.quantizer.levels = ()
    config.quantizer.num_codes = 15360  # the paper's 2^14 preset
    assert quantizers.build(config.quantizer, dim=8).levels == (8, 8, 8, 6, 5)
    config.quantizer.num_codes = 16384
    with pytest.raises(ValueError, match="config.quantizer"):
        quantizers.build(config.quantizer, dim=8)


def test_a_prior_trains_on_residual_code_maps_and_samples_them(tokenizer_runs, tmp_path):
    """Residual VQ's [h, w, depth] code maps: cached as they are, read by the prior as one
    sequence of h * w * depth codes, sampled back into code maps the tokenizer decodes."""
    tokenizer_config, tokenizer_dir, _ = tokenizer_runs("residual")
    depth = tokenizer_config.quantizer.depth
    config = load_config("prior_quickstart", "smoke")
    config.tokenizer_dir = tokenizer_dir
    workdir = str(tmp_path / "prior")
    metrics = experiment.train_and_evaluate(config, workdir)
    assert np.isfinite(metrics["bits_per_token"])
    cached = np.load(os.path.join(workdir, "tokens", "train_flip.npz"))["codes"]
    assert cached.shape[1:] == (8, 8, depth)
    tokenizer = vqjax.pretrained.load(tokenizer_dir)
    prior = vqjax.prior.load(workdir)
    assert prior.code_shape == (8, 8, depth) and prior.model.seq_len == 64 * depth
    codes = np.asarray(prior.sample_codes(jax.random.key(0), labels=[0, 1]))
    assert codes.shape == (2, 8, 8, depth) and codes.max() < tokenizer.num_codes
    assert np.asarray(tokenizer.decode_indices(codes)).shape == (2, 32, 32, 3)


def test_a_token_cache_of_another_quantizer_is_refused(tokenizer_runs, tmp_path):
    from vqjax.data import codes

    tokenizer_config, tokenizer_dir, _ = tokenizer_runs("residual")
    tokenizer = vqjax.pretrained.load(tokenizer_dir)
    data_cfg = load_config("prior_quickstart", "smoke").data
    description = codes.describe(tokenizer, tokenizer_dir, data_cfg, "train", False, 0)
    assert description["quantizer"]["kind"] == "residual" and description["quantizer"]["depth"] == 3
    path = str(tmp_path / "tokens" / "train.npz")
    os.makedirs(os.path.dirname(path))
    other = json.loads(json.dumps(description))
    other["quantizer"]["depth"] = 2
    np.savez(path, codes=np.zeros((1, 8, 8, 2), np.uint16), labels=np.zeros((1,), np.int32),
             description=np.asarray(json.dumps(other, sort_keys=True)))
    with pytest.raises(ValueError, match="made with other settings \\(quantizer"):
        codes.cached_codes(str(tmp_path), tokenizer, tokenizer_dir, data_cfg, "train", flip=False,
                           batch_size=8, mesh=None)
