r"""Evaluates a model directory (a tokenizer workdir, a converted model or a prior) and writes eval.json.

  python -m experiments.evaluate --config=experiments/configs/evaluate.py --config.model_dir=DIR

See experiments/configs/evaluate.py for the metrics and the data options.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config file.", lock_config=True)
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import jax

    from vqjax.core import parallel
    from vqjax.eval import evaluate_model

    if _MULTIHOST.value:
        parallel.initialize_distributed()
    result = evaluate_model.evaluate_model(_CONFIG.value)
    if jax.process_index() == 0:
        print(evaluate_model.format_table(result), flush=True)


if __name__ == "__main__":
    app.run(main)
