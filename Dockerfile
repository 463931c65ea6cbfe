# docker build -t ultralong .          (then once, for pyxis: enroot import -o /shared/images/ultralong.sqsh dockerd://ultralong)
# The NVIDIA PyTorch container carries CUDA, NCCL, Transformer Engine, apex and DALI built together; we add this
# package (and its `eval` extra) on top without touching the container's torch. Base and the reasons for each
# step: docs/slurm.md, "The container image".
ARG BASE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${BASE}

WORKDIR /opt/megatron-ultralong
COPY pyproject.toml README.md ./
COPY megatron_ultralong ./megatron_ultralong
COPY launch ./launch
COPY slurm ./slurm
COPY tools ./tools

# The image sets PIP_CONSTRAINT for every pip call (its own build's pins, which refuse our transformers / lm-eval
# versions): unset it, as Megatron's Dockerfiles do, and pin only the container's torch ourselves.
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/keep-torch.txt \
 && unset PIP_CONSTRAINT \
 && pip install --no-cache-dir -c /tmp/keep-torch.txt -e ".[eval]" \
 && python -c "import torch; assert 'torch==' + torch.__version__ == open('/tmp/keep-torch.txt').read().strip(), \
'pip replaced the container torch'" \
 && python -c "import transformer_engine.pytorch, fused_weight_gradient_mlp_cuda, nvidia.dali, lm_eval; \
from megatron.core.tensor_parallel.layers import _grad_accum_fusion_available as fused; \
assert fused, 'Megatron cannot see apex fused_weight_gradient_mlp_cuda'; \
import megatron.core, megatron_ultralong.config; \
print('megatron-core', megatron.core.__version__, 'transformer-engine', transformer_engine.__version__)"

ENV PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    TORCH_NCCL_AVOID_RECORD_STREAMS=1
