"""The one definition of a recipe's quality gap and of a diverged run.

The training loop's guard, the runner's status, the adaptive search's objective and the report's
ranking all use these functions, so the search optimises exactly the number the report ranks by.

- **Baseline**: a trial is compared with the bf16 baseline of the same task, size and seed. When
  several finished baseline runs share a seed (a baseline rerun under another id), their mean
  is that seed's baseline; a diverged or failed baseline is no baseline.
- **Gap of a trial**: the relative validation-loss gap ``(loss - base) / base`` and, where the
  task reports accuracy, the accuracy gap ``base_acc - acc``. Both are "lower is better".
- **Gap of a recipe**: the mean over seeds of its trials' gaps (paired by seed, not a ratio of
  means). A recipe that diverged on any seed is ranked nowhere: the search prunes it and the
  report keeps it off every front.
- **Diverged**: a loss that is not finite, or whose magnitude grows past ``BLOWUP`` times the
  magnitude of the run's first loss.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import TypeVar

BLOWUP = 1e3  # a loss this many times its first value is a run gone astray, not a slow start
_FIRST_FLOOR = 1e-12  # a first loss of zero would make every later loss a blow-up

Number = TypeVar("Number")  # a float, or an array/Series of them: the arithmetic broadcasts


def diverged(loss: float, first: float | None = None, blowup: float = BLOWUP) -> bool:
    """Whether ``loss`` marks a diverged run: not finite, or past ``blowup`` x |first loss|."""
    if not math.isfinite(loss):
        return True
    return first is not None and abs(loss) > blowup * max(abs(first), _FIRST_FLOOR)


def seed_baseline(losses: Iterable[float]) -> float:
    """One seed's baseline from its finished baseline runs' metric values: their mean.

    NaN when there is none (or only non-finite ones): no trial of that seed has a gap then.
    """
    finite = [float(loss) for loss in losses if math.isfinite(float(loss))]
    return statistics.fmean(finite) if finite else math.nan


def relative_gap(loss: Number, base: Number) -> Number:
    """A trial's relative validation-loss gap to its seed's baseline (lower is better)."""
    return (loss - base) / base


def accuracy_gap(accuracy: Number, base: Number) -> Number:
    """A trial's accuracy gap to its seed's baseline, in accuracy points (lower is better)."""
    return base - accuracy


def recipe_gap(seed_gaps: Iterable[float]) -> float:
    """A recipe's gap from its finished seeds' gaps: their mean (NaN when there is none).

    A diverged seed has no gap to pass; the caller keeps such a recipe out of any ranking.
    """
    gaps = [float(gap) for gap in seed_gaps]
    return statistics.fmean(gaps) if gaps else math.nan
