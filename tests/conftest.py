"""Test set-up: one process with 4 forced CPU devices, set before JAX starts."""

import os

# XLA's LLVM back end at -O0: the suite's programs are small and run a few times, so their
# compilation, not their execution, is what the suite waits for; -O0 halves the time of a
# model's init and cuts a GAN step's by a quarter, and runs them as fast. The HLO passes
# (fusion, layout, the algorithms) are those users get.
# VQJAX_TEST_XLA_DEFAULT_OPT=1 keeps XLA's default level: tests/test_default_optimisation.py runs the
# numeric parity tests that way too, so that no tolerance is confirmed only at -O0.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    + ("" if os.environ.get("VQJAX_TEST_XLA_DEFAULT_OPT") else " --xla_backend_optimization_level=0")
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One BLAS thread: numpy's 2048x2048 eigendecompositions (FID) run ~10x faster than with two
# threads competing with XLA's on 2 cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One compilation cache for this session (new each run, so nothing carries over between runs):
# the trainer builds fresh closures on every call, so resumed runs and entry-point
# subprocesses would otherwise recompile identical programs.
# A pytest run in a subprocess (test_default_optimisation) inherits the directory and must not
# delete it when it ends: only the process that made it does.
_OWN_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="vqjax_test_jit_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"

import sys  # noqa: E402

# torch (a test-only reference) probes for triton, its CUDA kernel compiler, and importing
# triton after TensorFlow and XLA are loaded crashes the process (conflicting LLVM symbols).
# The CPU reference runs never need it; a None entry makes `import triton` an ImportError.
sys.modules.setdefault("triton", None)

import jax  # noqa: E402


def pytest_configure(config):
    assert jax.device_count() == 4, "tests/conftest.py must run before anything imports JAX"


def pytest_unconfigure(config):
    if _OWN_CACHE_DIR is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


import pytest  # noqa: E402

# Whether tests/test_multihost.py has tests in this session: its two-process run then starts in
# the background as soon as the shared VQGAN it mirrors is trained (see `trained_vqgan`).
_MULTIHOST_SELECTED = pytest.StashKey[bool]()


def pytest_collection_finish(session):
    session.config.stash[_MULTIHOST_SELECTED] = any(
        item.nodeid.startswith("tests/test_multihost.py") for item in session.items)


def pytest_sessionfinish(session):
    multihost = sys.modules.get("tests.test_multihost")
    if multihost is not None:
        multihost.stop_background_pod()  # a session that ends early leaves no processes behind


# The configs of the shared runs below (tests/test_multihost.py trains the same on two processes).
def vqgan_run_config():
    from tests.helpers import load_config

    config = load_config("vqgan_quickstart", "smoke")
    config.optim.params_ema_decay = 0.5  # evaluation uses the weight average
    return config


def prior_run_config(tokenizer_dir: str):
    from tests.helpers import load_config

    config = load_config("prior_quickstart", "smoke")
    config.tokenizer_dir = tokenizer_dir
    return config


def diffusion_run_config():
    from tests.helpers import load_config

    return load_config("diffusion_quickstart", "smoke")


def _train(config, tmp_path_factory, name):
    from vqjax.train import experiment

    workdir = str(tmp_path_factory.mktemp(name))
    return config, workdir, experiment.train_and_evaluate(config, workdir)


@pytest.fixture(scope="session")
def trained_vqgan(tmp_path_factory, request):
    """One VQGAN smoke run (4 steps, weight average on) shared by the tests that need a
    finished workdir: (config, workdir, final metrics)."""
    run = _train(vqgan_run_config(), tmp_path_factory, "trained_vqgan")
    if request.config.stash.get(_MULTIHOST_SELECTED, False):
        # The two-process run of every family, on the second core while the suite goes on
        # (the prior's reference run reads this VQGAN, so it can start no earlier).
        from tests import test_multihost

        test_multihost.start_background_pod(tmp_path_factory, {
            "vqgan": run[0], "prior": prior_run_config(run[1]), "diffusion": diffusion_run_config()})
    return run


@pytest.fixture(scope="session")
def trained_prior(trained_vqgan, tmp_path_factory):
    """One MaskGIT prior smoke run (prior_quickstart:smoke, 4 steps) on the shared VQGAN, shared
    by the tests that need a finished prior workdir: (config, workdir, final metrics)."""
    return _train(prior_run_config(trained_vqgan[1]), tmp_path_factory, "trained_prior")


@pytest.fixture(scope="session")
def trained_diffusion(tmp_path_factory):
    """One diffusion smoke run (diffusion_quickstart:smoke, 4 steps) shared by the tests that
    need a finished diffusion workdir: (config, workdir, final metrics)."""
    return _train(diffusion_run_config(), tmp_path_factory, "trained_diffusion")
