"""The demo's stage launcher: the threads and MKL setting each training process gets."""
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


def test_training_processes_run_mkl_with_a_fixed_thread_count_unless_the_user_says_otherwise(monkeypatch):
    monkeypatch.delenv("MKL_DYNAMIC", raising=False)
    assert stages.training_env(2)["MKL_DYNAMIC"] == "FALSE"
    monkeypatch.setenv("MKL_DYNAMIC", "TRUE")
    assert stages.training_env(2)["MKL_DYNAMIC"] == "TRUE"
