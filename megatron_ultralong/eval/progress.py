"""Time left in an eval run whose samples differ in length (how it is estimated: docs/eval.md, Progress and ETA).

    eta = Eta([len_1, len_2, ...])          # prompt tokens of every sample, in run order
    eta.done(seconds)                       # after each sample, with the seconds it took
    eta.seconds_left()                      # an estimate for the samples still to run
"""
from __future__ import annotations

from typing import List, Sequence, Tuple


class Eta:
    """Fits seconds = a·L + b·L² (a, b >= 0) to the samples done, L their prompt tokens, and sums it over the rest.
    While every sample done has one length the fit is linear: elapsed × remaining tokens / done tokens."""

    def __init__(self, lengths: Sequence[int]):
        self.lengths = [int(n) for n in lengths]
        self._seen: List[Tuple[int, float]] = []

    def done(self, seconds: float) -> None:
        """Record the next sample in run order as finished after ``seconds``."""
        self._seen.append((self.lengths[len(self._seen)], max(float(seconds), 0.0)))

    def _fit(self) -> Tuple[float, float]:
        """(a, b) per unit of the longest length."""
        scale = float(max(self.lengths) or 1)  # lengths in units of the longest: a well-conditioned fit
        xs, ts = [n / scale for n, _ in self._seen], [t for _, t in self._seen]
        linear = (sum(ts) / sum(xs), 0.0) if sum(xs) > 0 else (0.0, 0.0)
        if len(set(xs)) < 2:
            return linear
        s2, s3, s4 = (sum(x ** k for x in xs) for k in (2, 3, 4))
        t1, t2 = sum(t * x for t, x in zip(ts, xs)), sum(t * x * x for t, x in zip(ts, xs))
        det = s2 * s4 - s3 * s3
        if det > 0:
            a, b = (t1 * s4 - t2 * s3) / det, (s2 * t2 - s3 * t1) / det
            if a >= 0 and b >= 0:
                return a, b
        # a negative term: the better of the one-term fits (least squares through the origin)
        fits = [(t1 / s2, 0.0), (0.0, t2 / s4)]
        return min(fits, key=lambda f: sum((t - f[0] * x - f[1] * x * x) ** 2 for t, x in zip(ts, xs)))

    def seconds_left(self) -> float:
        """Estimated seconds for the samples not done yet (0 before the first one is done: nothing to go by)."""
        if not self._seen:
            return 0.0
        a, b = self._fit()
        scale = float(max(self.lengths) or 1)
        return sum(a * x + b * x * x for x in (n / scale for n in self.lengths[len(self._seen):]))
