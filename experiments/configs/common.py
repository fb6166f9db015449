"""The families' default configs (vqjax.families.defaults), which every experiment config here
starts from."""

from vqjax.families.defaults import (diffusion_base, evaluation_base, prior_base, shrink_diffusion_for_smoke, shrink_for_smoke,
                                     shrink_prior_for_smoke, vqgan_base, vqvae_base)

__all__ = ["config_args", "diffusion_base", "prior_base", "shrink_diffusion_for_smoke", "shrink_for_smoke",
           "shrink_prior_for_smoke", "vqgan_base", "vqvae_base", "evaluation_base"]


def config_args(arg, valid=("smoke",)) -> set:
    """The comma-separated arguments after `config.py:`, each checked: a misspelt one (`:smok`)
    would otherwise run the full-size config without a word."""
    args = set(filter(None, (arg or "").split(",")))
    unknown = sorted(args - set(valid))
    if unknown:
        raise ValueError(f"Unknown config argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"this config takes {', '.join(sorted(valid))} (comma-separated, after "
                         "`config.py:`), or none.")
    return args
