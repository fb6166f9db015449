"""Shared helpers for the tests."""

import importlib
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "experiments", "configs")


# Config files that are not training experiments.
NOT_TRAINING = {"common.py", "evaluate.py"}


def config_names():
    """The training experiments' config files."""
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                  if f.endswith(".py") and not f.startswith("_") and f not in NOT_TRAINING)


def load_config(name, arg=None):
    return importlib.import_module(f"experiments.configs.{name}").get_config(arg)
