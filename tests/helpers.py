"""Shared helpers for the tests."""

import importlib
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "experiments", "configs")


# Config files that are not training experiments.
NOT_TRAINING = {"common.py", "evaluate.py"}


def _training_config_names():
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                  if f.endswith(".py") and not f.startswith("_") and f not in NOT_TRAINING)


def is_prior_config(name) -> bool:
    return "tokenizer_dir" in load_config(name)


def config_names():
    """The tokenizer experiments' config files."""
    return [name for name in _training_config_names() if not is_prior_config(name)]


def prior_config_names():
    """The prior (transformer) experiments' config files."""
    return [name for name in _training_config_names() if is_prior_config(name)]


def load_config(name, arg=None):
    return importlib.import_module(f"experiments.configs.{name}").get_config(arg)
