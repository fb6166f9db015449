"""The numeric parity tests again at XLA's default optimisation level (the suite runs its back
end at -O0 for compile time, tests/conftest.py): their tolerances must hold for the code users
run. One pytest subprocess over the reference comparisons: taming's autoencoder, LPIPS (values
and gradient), pytorch-fid's Inception, haiku's EMA codebook, diffusers' U-Net, schedulers and
DDIM samples of a converted pipeline, and resume == uninterrupted."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY_TESTS = [
    "tests/test_convert_taming.py::test_encoder_codes_and_reconstructions_equal_taming",
    "tests/test_lpips.py::test_distances_equal_the_lpips_package",
    "tests/test_lpips.py::test_loss_gradient_equals_the_lpips_package",
    "tests/test_inception.py::test_features_and_logits_equal_pytorch_fid",
    "tests/test_haiku_parity.py::test_ema_update_reproduces_haiku_over_several_steps",
    "tests/test_experiment.py::test_preempted_and_resumed_run_equals_an_uninterrupted_one[vqgan]",
    "tests/test_unet.py::test_same_outputs_as_diffusers_with_copied_weights",
    "tests/test_diffusion_maths.py::test_ddpm_steps_equal_diffusers",
    "tests/test_diffusion_maths.py::test_ddim_steps_equal_diffusers",
    "tests/test_diffusion_maths.py::test_dpm_solver_equals_diffusers",
    "tests/test_diffusion.py::test_converted_diffusers_pipeline_samples_what_diffusers_does",
]


@pytest.mark.skipif(bool(os.environ.get("VQJAX_TEST_XLA_DEFAULT_OPT")), reason="already at the default level")
def test_parity_holds_at_the_default_optimisation_level():
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # conftest's -O0 not inherited
    env["VQJAX_TEST_XLA_DEFAULT_OPT"] = "1"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARITY_TESTS],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary and "skipped" not in summary, \
        result.stdout[-5000:] + result.stderr[-3000:]
