"""Model directories written before the family / quantizer interfaces (vqjax 0.1): their
config.json had no `family` and kept `legacy_beta` under `loss`; their checkpoints held the
network under `params`, the codebook under `codebook` and a Gumbel projection under
`gumbel_proj`. Read here into today's layout, so such a directory loads
(`vqjax.pretrained.load`, `config.init_from`, `experiments.evaluate`); training cannot resume
from it (its optimizer state has the old shape) and says so."""

from __future__ import annotations

import ml_collections

from vqjax.core import checkpoints


def family_of(config: ml_collections.ConfigDict) -> str:
    """The family of a config, including one written before `config.family` existed."""
    if "family" in config:
        return config.family
    if "tokenizer_dir" in config:
        return "prior"
    return "vqgan" if "disc" in config else "vqvae"


def upgrade_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config.json of any vqjax version, in today's layout (an unlocked copy)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if "family" not in config:
        config.family = family_of(config)
    if "loss" in config and "legacy_beta" in config.loss:
        if "quantizer" in config:
            config.quantizer.legacy_beta = bool(config.loss.legacy_beta)
        del config.loss["legacy_beta"]
    return config


def read_model_config(directory: str) -> ml_collections.ConfigDict:
    """`directory`'s config.json in today's layout."""
    return upgrade_config(checkpoints.read_config(directory))


def is_old_tokenizer_tree(tree) -> bool:
    """Whether a saved tree (or its metadata) has the vqjax 0.1 tokenizer layout."""
    return "codebook" in tree and "extra" not in tree


def upgrade_tokenizer_tree(saved: dict, quantizer) -> dict:
    """A tokenizer checkpoint tree of vqjax 0.1 ({'params', 'codebook', 'gumbel_proj',
    'disc_params', 'ema_params', ...}) as today's ({'params': {'net', 'quantizer'},
    'extra': {'quantizer', ...}, 'ema_params'}), for the quantizer `quantizer` (built from
    the directory's config). Today's trees pass through unchanged."""
    if not is_old_tokenizer_tree(saved):
        return saved
    from vqjax import quantizers

    codebook = dict(saved["codebook"])
    if isinstance(quantizer, quantizers.EMAQuantizer):
        quantizer_params, quantizer_state = {}, codebook
    elif isinstance(quantizer, quantizers.LearnedQuantizer):
        quantizer_params = {"codebook": codebook["embedding"]}
        quantizer_state = {"usage": codebook["usage"], "last_used": codebook["last_used"]}
    elif isinstance(quantizer, quantizers.GumbelQuantizer):
        quantizer_params, quantizer_state = {"proj": saved["gumbel_proj"], "codebook": codebook["embedding"]}, {}
    else:
        raise ValueError(f"A vqjax 0.1 checkpoint has no {type(quantizer).__name__} quantizer.")
    tree = {"params": {"net": saved["params"], "quantizer": quantizer_params},
            "extra": {"quantizer": quantizer_state,
                      **{k: saved[k] for k in ("disc_params", "disc_batch_stats") if k in saved}}}
    if saved.get("ema_params") is not None:
        tree["ema_params"] = {"net": saved["ema_params"], "quantizer": quantizer_params}
    for key in ("step", "seed"):
        if key in saved:
            tree[key] = saved[key]
    return tree


def resume_refusal(directory: str) -> str:
    """The sentence for a run asked to resume from a vqjax 0.1 workdir."""
    return (f"{directory} was written by vqjax 0.1, whose train state has another layout; it cannot be "
            "resumed. Start a new --workdir with --config.init_from=" + directory + " (the weights and "
            "the codebook carry over), or load it with vqjax.pretrained.load.")
