"""Every CPU-only workaround Megatron-Core 0.16.1 needs, in one place. Active only when CUDA is absent.

    cpu_shims.install()                  # process-wide shims (idempotent; no-op with CUDA)
    with cpu_shims.cuda_to_cpu(): ...    # around a pipeline-schedule call
    with cpu_shims.cuda_type_names(): ...  # around optimizer calls

Which Megatron spot each shim answers: docs/parallel.md, "CPU runs".
"""
from __future__ import annotations

import contextlib

import torch
from megatron.core.tensor_parallel import random as mrandom
from torch.overrides import TorchFunctionMode

_INSTALLED = False


def cuda_absent() -> bool:
    """True on a CPU-only machine (the case these shims exist for)."""
    return not torch.cuda.is_available()


class CPURNGStatesTracker(mrandom.CudaRNGStatesTracker):
    """Named RNG streams on the CPU generator, with the interface of Megatron's CudaRNGStatesTracker.

    ``add(name, seed)`` records the state a generator seeded with ``seed`` has; ``fork(name)`` swaps that state
    in for the duration of the block and saves where it got to, restoring the caller's state afterwards.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(use_cudagraphable_rng=False, is_inference_rng_tracker=False)

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"rng seed {seed} already added")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already added")
        self.seeds_.add(seed)
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


class _CudaToCPU(TorchFunctionMode):
    """Rewrites device='cuda' to cpu and drops pin_memory in tensor factory calls."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        dev = kwargs.get("device")
        if dev is not None and "cuda" in str(dev):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_to_cpu():
    """Within the block, tensors requested on 'cuda' are made on the CPU (no-op when CUDA exists)."""
    if not cuda_absent():
        yield
        return
    with _CudaToCPU():
        yield


class _CudaTypeNames(TorchFunctionMode):
    """``tensor.type()`` of a CPU tensor answers 'torch.cuda.FloatTensor' (etc.) inside the block."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and out.startswith("torch.") \
                and not out.startswith("torch.cuda."):
            out = "torch.cuda." + out[len("torch."):]
        return out


@contextlib.contextmanager
def cuda_type_names():
    """Within the block, CPU tensors report CUDA type names to ``Tensor.type()`` (no-op when CUDA exists)."""
    if not cuda_absent():
        yield
        return
    with _CudaTypeNames():
        yield


def install() -> None:
    """Install the process-wide shims (1-3). Safe to call many times; no-op with CUDA."""
    global _INSTALLED
    if _INSTALLED or not cuda_absent():
        return
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    # model_parallel_cuda_manual_seed() calls initialize_rng_tracker() which builds the tracker only once.
    mrandom._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    _INSTALLED = True
