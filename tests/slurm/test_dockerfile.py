"""The Dockerfile, read (no docker on the test machine): base image, pip constraint, the self-check of the build."""
import re

from .helpers import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _install_step() -> str:
    return next(step for step in DOCKERFILE.split("\nRUN ")[1:] if "pip install" in step)


def test_base_is_an_ngc_pytorch_image_megatron_core_0_16_ci_runs_on():
    assert re.search(r"^ARG BASE=nvcr\.io/nvidia/pytorch:25\.(09|11)-py3$", DOCKERFILE, re.M)


def test_install_unsets_the_images_global_pip_constraint_and_keeps_its_torch():
    step = _install_step()
    assert step.index("unset PIP_CONSTRAINT") < step.index("pip install")
    assert "-c /tmp/keep-torch.txt" in step and "pip replaced the container torch" in step


def test_install_has_the_eval_extra_and_the_self_check_imports_the_gpu_kernels():
    step = _install_step()
    assert '-e ".[eval]"' in step
    for module in ("transformer_engine.pytorch", "fused_weight_gradient_mlp_cuda", "nvidia.dali", "lm_eval",
                   "_grad_accum_fusion_available"):
        assert module in step.split("pip install", 1)[1], module
