"""The shared body of the training entry points (`experiments.vqvae`, `experiments.vqgan`,
`experiments.transformer`)."""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def run(family: str) -> None:
    """Parses the flags and trains; `family` ('vqvae' | 'vqgan' | 'transformer') must match
    the config."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        from vqjax import parallel, trainer

        config = _CONFIG.value
        if "tokenizer_dir" in config:
            config_family = "transformer"
        else:
            config_family = "vqgan" if trainer.is_gan(config) else "vqvae"
        if config_family != family:
            raise app.UsageError(
                f"{config_flags.get_config_filename(flags.FLAGS['config'])} is a {config_family} "
                "config; run it with "
                f"python -m experiments.{config_family}.")
        if _MULTIHOST.value:
            parallel.initialize_distributed()
        if family == "transformer":
            from vqjax import prior

            prior.train_and_evaluate(config, _WORKDIR.value)
        else:
            trainer.train_and_evaluate(config, _WORKDIR.value)

    app.run(main)
