"""Run by Python at start-up when this folder is on PYTHONPATH (tests/checkpoint_pause.py: pause_env)."""
from tests.checkpoint_pause import install_from_env

install_from_env()
