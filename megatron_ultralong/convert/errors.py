"""The conversion errors and the ``[convert]`` log line, shared by every convert module (re-exported by
``megatron_ultralong.convert``).

    from .errors import ConvertError, log
"""
import sys


class ConvertError(ValueError):
    """A conversion that cannot be done as asked (unknown architecture, missing tensor, shape or layout mismatch).
    The message is one line: what is wrong and how to fix it."""


class VerificationError(ConvertError):
    """The exported model's logits differ from the Megatron model's by more than the tolerance."""


def log(msg: str, enabled: bool = True) -> None:
    """A '[convert] ...' line on stderr (when ``enabled``)."""
    if enabled:
        print(f"[convert] {msg}", file=sys.stderr, flush=True)
