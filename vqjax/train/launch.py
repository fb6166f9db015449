"""The shared body of the training entry points (`experiments.vqvae`, `experiments.vqgan`,
`experiments.transformer`, `experiments.diffusion`) and of `vqjax train`: absl flags, a config
file with `--config.FIELD=VALUE` overrides, the workdir."""

from typing import Optional

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-node GPU).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "With --multihost where JAX cannot detect the "
                                   "cluster: host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "With --coordinator_address: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "With --coordinator_address: this process' index.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir although the config changes its model, quantizer, "
    "data or batch size (refused otherwise: the checkpoint's history would mean something else).")
flags.mark_flags_as_required(["config", "workdir"])


def run(family: Optional[str] = None) -> None:
    """Parses the flags and trains; `family` ('vqvae' | 'vqgan' | 'prior' | 'diffusion') must be the
    config's `family`, else the right command is named; None (`vqjax train`) takes the config's."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        from vqjax import families
        from vqjax.core import parallel
        from vqjax.train import experiment

        config = _CONFIG.value
        filename = config_flags.get_config_filename(flags.FLAGS["config"])
        config_family = config.get("family")
        if config_family not in families.FAMILIES:
            raise app.UsageError(f"{filename} sets no known config.family ({config_family!r}); set it to one of "
                                 f"{sorted(families.FAMILIES)}.")
        if family is not None and config_family != family:
            raise app.UsageError(f"{filename} is a {config_family} config; run it with "
                                 f"python -m {families.ENTRY_POINTS[config_family]}.")
        if _MULTIHOST.value:
            parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        elif _COORDINATOR.value:
            raise app.UsageError("--coordinator_address is for multi-process runs: add --multihost.")
        experiment.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)

    app.run(main)
