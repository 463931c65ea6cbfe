# docker build -t megatron-ultralong .
# The NVIDIA PyTorch container carries CUDA, NCCL, Transformer Engine, apex and DALI built together; we add this
# package on top without touching its torch (the constraint pins the container's own build).
ARG BASE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE}

WORKDIR /opt/megatron-ultralong
COPY pyproject.toml README.md ./
COPY megatron_ultralong ./megatron_ultralong
COPY launch ./launch
COPY slurm ./slurm
COPY tools ./tools

RUN python -c "import torch, transformer_engine; print('torch==' + torch.__version__)" > /tmp/keep-torch.txt \
 && pip install --no-cache-dir -c /tmp/keep-torch.txt -e . \
 && python -c "import megatron.core, megatron_ultralong.config; print('megatron-core', megatron.core.__version__)"

ENV PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    TORCH_NCCL_AVOID_RECORD_STREAMS=1
