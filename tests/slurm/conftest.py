"""The SLURM tests' cluster: a real one-node SLURM from tests/slurm/cluster.sh (skipped where it cannot run)."""
import fcntl
import os
import subprocess

import psutil
import pytest

from .helpers import CLUSTER, STARTED, SUBMITTED

UP_TIMEOUT_S = 420  # apt-get install slurm-wlm munge (~10 s when the mirror answers) + daemons start (~1 s)


def cluster(command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM; stopped at the end if this session started it and no other session uses it."""
    was_up = cluster("status").returncode == 0
    try:
        r = cluster("up", timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"tests/slurm/cluster.sh up did not finish in {UP_TIMEOUT_S} s (apt-get stuck? offline?)")
    if r.returncode == 3:
        pytest.skip(f"no SLURM test cluster on this machine: {r.stderr.strip()}")
    assert r.returncode == 0, f"tests/slurm/cluster.sh up failed:\n{r.stdout}\n{r.stderr}"
    # every session using the cluster holds a shared lock, so the last one out is the one that may stop it
    lab = os.environ.get("ULTRALONG_SLURM_LAB", "/tmp/ultralong-slurm")
    os.makedirs(lab, exist_ok=True)
    with open(os.path.join(lab, "users.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield
        if not was_up:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another pytest session still submits jobs to it
            cluster("down")


@pytest.fixture(autouse=True)
def no_leftovers():
    """After each test: cancel its SLURM jobs and kill what its launchers started, also when it failed or timed
    out (the workers sit in sessions of their own, so a process group kill would miss them)."""
    yield
    while SUBMITTED:
        SUBMITTED.pop().cancel()
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            try:
                tree = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            for p in [*tree, proc]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait(timeout=30)
