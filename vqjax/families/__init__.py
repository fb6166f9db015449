"""Model families: the interface (`base.Family`) and the registry `config.family` picks from.

A new family (diffusion, say) is one module with a `Family` subclass and one entry here; the
loop, checkpoints, resume, init_from and metrics.json come with it.
"""

from __future__ import annotations

from vqjax.families.base import Family
from vqjax.families.diffusion import DiffusionFamily
from vqjax.families.prior import PriorFamily
from vqjax.families.vqgan import VQGANFamily
from vqjax.families.vqvae import VQVAEFamily

FAMILIES: dict[str, type[Family]] = {
    "vqvae": VQVAEFamily,
    "vqgan": VQGANFamily,
    "prior": PriorFamily,
    "diffusion": DiffusionFamily,
}
# The entry point that trains each family (the configs' docstrings give the commands).
ENTRY_POINTS = {"vqvae": "experiments.vqvae", "vqgan": "experiments.vqgan", "prior": "experiments.transformer",
                "diffusion": "experiments.diffusion"}


def build(config, *, mesh, workdir: str, **kwargs) -> Family:
    """The family `config.family` names, built from `config` on `mesh` for `workdir`."""
    if config.get("family") not in FAMILIES:
        raise ValueError(f"config.family is {config.get('family')!r}; use one of {sorted(FAMILIES)}.")
    return FAMILIES[config.family](config, mesh=mesh, workdir=workdir, **kwargs)
