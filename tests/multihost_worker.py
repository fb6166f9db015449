r"""One process of a two-process run for tests/test_multihost.py: it joins the pod as the entry
points do with `--multihost` (`vqjax.core.parallel.initialize_distributed`), then trains several
smoke configs one after another, so that one pair of processes (one start-up and one
`jax.distributed` connection) serves every family:

  python -m tests.multihost_worker <coordinator port> <process id> <runs.json>

runs.json: a list of {"config": name in experiments/configs, "workdir": ..., "overrides":
{"section.field" or "field": value}}, each trained as `python -m experiments.<family>
--config=experiments/configs/<name>.py:smoke --config.<key>=<value> ... --multihost` would.
"""

import json
import sys
import time


def main(port: str, process_id: str, runs_file: str) -> None:
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # as experiments/launch.py: Orbax logs every save at INFO
    from tests.helpers import load_config
    from vqjax.core import parallel
    from vqjax.train import experiment

    start = time.monotonic()
    parallel.initialize_distributed(f"localhost:{port}", 2, int(process_id))
    print(f"jax.distributed.initialize: {time.monotonic() - start:.1f} s", flush=True)
    with open(runs_file) as f:
        runs = json.load(f)
    for run in runs:
        config = load_config(run["config"], "smoke")
        for key, value in run["overrides"].items():
            *sections, field = key.split(".")
            node = config
            for section in sections:
                node = node[section]
            node[field] = value
        start = time.monotonic()
        result = experiment.train_and_evaluate(config, run["workdir"])
        print(f"{run['config']} ({time.monotonic() - start:.1f} s): {result}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
