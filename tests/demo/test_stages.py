"""The demo's stage launcher: how many threads each training process gets."""
import os

from megatron_ultralong.demo import stages


def test_training_processes_share_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert stages.threads_per_process(1) == "2"
    assert stages.threads_per_process(2) == "1"
    assert stages.threads_per_process(4) == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert stages.threads_per_process(2) == "3"
