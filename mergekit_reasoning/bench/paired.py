"""Paired statistics of a Δ: two models scored on the same items, compared item by item.

The uncertainty of a difference between two models scored on the same items is that
of the per-item differences, much smaller than the two scores' own standard errors
suggest. Two methods, both from scipy:

- **0/1 metrics** (exact match, pass@1 of one program, acc): the exact McNemar test.
  Only the discordant items (one model right, the other wrong) carry information; given
  their number m, the count the other model wins is Binomial(m, ½) under no difference.
  The p-value is that two-sided binomial test; the interval inverts it (Clopper–Pearson
  for the share π of discordant items the other model wins, and Δ = m/n·(2π − 1)), so
  the interval excludes 0 exactly when p < 1 − level. With no discordant item at all,
  the interval is ± the exact upper limit of the discordance rate.
- **everything else, and groups** (BBH's 27 tasks): a seeded paired bootstrap of the
  per-item differences, resampled within each stratum (subtask) with the strata's sizes
  fixed, and aggregated by the caller's rule (lm-eval's for a group); a percentile
  interval, and the p-value read from the same bootstrap distribution (twice its smaller
  tail at 0, as a Monte Carlo p-value: never below 2/(B + 1)), so the interval excludes 0
  when p < 1 − level (up to that one draw). Like any bootstrap it is approximate, and
  optimistic for a handful of items; a stratum of one item adds no spread, so a group of
  one item per subtask gets no interval, and neither do two models no item of which differs.

Each result also carries the minimum detectable Δ: the smallest |Δ| the test would
detect with 80 % power at the same level, given the number of items and the observed
discordance (or, for the bootstrap, the observed standard error).

Cheap to import: numpy and scipy load when a statistic is computed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

from mergekit_reasoning.core.errors import BenchError

LEVEL = 0.95  # two-sided confidence level of every interval
POWER = 0.8  # power at which the minimum detectable Δ is given
N_RESAMPLES = 10_000  # bootstrap resamples
SEED = 0  # the bootstrap's seed, unless the caller gives one

MCNEMAR = "exact McNemar"
BOOTSTRAP = "paired bootstrap"


@dataclass(frozen=True)
class Paired:
    """One Δ = other − base, with its paired interval and p-value (fractions, not points)."""

    n: int
    delta: float
    ci: Optional[Tuple[float, float]]  # None: too few items to say anything
    p: Optional[float]
    method: str
    level: float
    mde: Optional[float]  # smallest |Δ| detectable at POWER; None where no Δ could be
    better: Optional[int] = None  # 0/1 metrics: items only the other model gets right
    worse: Optional[int] = None  # ... and items only the base gets right
    seed: Optional[int] = None  # bootstrap only
    n_resamples: Optional[int] = None
    strata: Optional[int] = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None or k in ("ci", "p", "mde")}
        out["ci"] = list(self.ci) if self.ci is not None else None
        out["significant"] = self.significant
        return out


def align(task: str, base: Mapping[Hashable, float], other: Mapping[Hashable, float], names=("base", "other")):
    """The two models' values on the same items, in the base's item order.

    Paired statistics need every item scored by both; anything else is an error naming
    the task, never a silent join on the items they share.
    """
    import numpy as np

    only_base = [i for i in base if i not in other]
    only_other = [i for i in other if i not in base]
    if only_base or only_other:
        example = (only_base or only_other)[0]
        raise BenchError(
            f"task {task}: {names[0]} and {names[1]} were not scored on the same items "
            f"({len(only_base)} only in {names[0]}, {len(only_other)} only in {names[1]}, e.g. item {example!r}); "
            "paired statistics need the same items: rescore both with the same data and limit"
        )
    ids = list(base)
    return np.asarray([base[i] for i in ids], dtype=float), np.asarray([other[i] for i in ids], dtype=float)


def is_binary(*values) -> bool:
    import numpy as np

    return all(bool(np.isin(v, (0.0, 1.0)).all()) for v in values)


def _z(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def mcnemar_mde(n: int, discordant: int, level: float = LEVEL, power: float = POWER) -> Optional[float]:
    """Smallest |Δ| McNemar's test detects with `power`, for n items of which a share ψ = discordant/n disagree.

    Written out because no library ships McNemar's power: Connor's (1987) sample-size
    formula n·δ² = (z_a·√ψ + z_b·√(ψ − δ²))², solved for δ in closed form (a quadratic in
    s = √(ψ − δ²)). None when nothing disagrees or n is too small for any Δ to be detected.
    """
    if n <= 0 or discordant <= 0:
        return None
    psi = discordant / n
    a, b = _z(1 - (1 - level) / 2) * math.sqrt(psi), _z(power)
    # (n + b²)·s² + 2ab·s + (a² − nψ) = 0, s ≥ 0
    disc = (a * b) ** 2 - (n + b * b) * (a * a - n * psi)
    if disc < 0:
        return None
    s = (-a * b + math.sqrt(disc)) / (n + b * b)
    if s < 0:  # even Δ = ψ (every discordant item one way) is not detectable
        return None
    return math.sqrt(max(psi - s * s, 0.0))


def mcnemar(base, other, level: float = LEVEL) -> Paired:
    """Exact McNemar for 0/1 values: Δ, its exact conditional interval and the two-sided p-value."""
    import numpy as np
    from scipy.stats import binomtest

    base, other = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    n = int(base.size)
    if n == 0:
        raise BenchError("no items to compare")
    better = int(((other == 1) & (base == 0)).sum())
    worse = int(((other == 0) & (base == 1)).sum())
    m = better + worse
    delta = (better - worse) / n
    if m == 0:
        # The models agree on every item. Conditioning on m = 0 would give the empty interval
        # [0, 0]; instead bound the discordance itself (|Δ| ≤ its rate, whose exact upper limit
        # with none of n observed is 1 − (α/2)^(1/n)), which covers Δ unless m = 0 was itself
        # a rarer-than-α/2 draw.
        bound = float(binomtest(0, n, 0.5).proportion_ci(confidence_level=level, method="exact").high)
        ci, p = (-bound, bound), 1.0
    else:
        test = binomtest(better, m, 0.5)
        share = test.proportion_ci(confidence_level=level, method="exact")
        ci = (m / n * (2 * share.low - 1), m / n * (2 * share.high - 1))
        p = float(test.pvalue)
    return Paired(
        n=n,
        delta=delta,
        ci=ci,
        p=p,
        method=MCNEMAR,
        level=level,
        mde=mcnemar_mde(n, m, level),
        better=better,
        worse=worse,
    )


def pooled_mean(means: List, sizes: List[int]):
    """The default aggregation of strata: every item weighs the same."""
    return sum(m * s for m, s in zip(means, sizes)) / sum(sizes)


def bootstrap(
    strata: Sequence[Tuple[Sequence[float], Sequence[float]]],
    aggregate: Callable[[List, List[int]], object] = pooled_mean,
    *,
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Paired:
    """Seeded paired bootstrap of Δ over strata of (base, other) values, resampled within each stratum.

    `aggregate(means, sizes)` turns per-stratum means (arrays over resamples) into the
    statistic, e.g. lm-eval's `aggregate_subtask_metrics` for a group; one stratum is a
    plain paired bootstrap of the mean difference.
    """
    import numpy as np
    from scipy.stats import bootstrap as scipy_bootstrap

    diffs = [np.asarray(o, dtype=float) - np.asarray(b, dtype=float) for b, o in strata]
    diffs = [d for d in diffs if d.size]
    if not diffs:
        raise BenchError("no items to compare")
    sizes = [int(d.size) for d in diffs]
    n = sum(sizes)

    def statistic(*samples, axis=-1):
        return aggregate([s.mean(axis=axis) for s in samples], sizes)

    delta = float(statistic(*diffs))
    common = dict(method=BOOTSTRAP, level=level, seed=seed, n_resamples=n_resamples, strata=len(diffs))
    if all(size < 2 for size in sizes):  # one item per stratum: resampling cannot show any spread
        return Paired(n=n, delta=delta, ci=None, p=None, mde=None, **common)
    if all(bool((d == 0).all()) for d in diffs):  # no item differs: nothing to resample, no interval
        return Paired(n=n, delta=delta, ci=None, p=1.0, mde=None, **common)
    if all(bool((d == d[0]).all()) for d in diffs):  # no spread: every resample is Δ itself
        dist = np.full(n_resamples, delta)
        ci = (delta, delta)
    else:
        res = scipy_bootstrap(
            tuple(diffs),
            statistic,
            n_resamples=n_resamples,
            paired=False,  # several samples resampled independently: stratified
            vectorized=True,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        dist = res.bootstrap_distribution
        ci = (float(res.confidence_interval.low), float(res.confidence_interval.high))
    # Twice the smaller tail at 0, counted as Monte Carlo p-values are (the observed Δ is one of
    # B + 1 draws), so a p-value is never 0 and its mark agrees with the percentile interval.
    tail = min(int((dist <= 0).sum()), int((dist >= 0).sum()))
    p = float(min(1.0, 2 * (tail + 1) / (dist.size + 1)))
    se = float(dist.std(ddof=1))
    mde = (_z(1 - (1 - level) / 2) + _z(POWER)) * se if se > 0 else None
    return Paired(n=n, delta=delta, ci=ci, p=p, mde=mde, **common)


def compare(
    task: str,
    base: Dict[str, Mapping[Hashable, float]],
    other: Dict[str, Mapping[Hashable, float]],
    *,
    group: Optional[Callable[[List, List[int]], object]] = None,
    names=("base", "other"),
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Paired:
    """Δ of one metric on one task: `base` and `other` map each stratum (an lm-eval task
    name; one for a plain task, a group's subtasks for a group) to item id -> value.

    A plain task of 0/1 values gets McNemar; a group (`group` is its aggregation) or
    any other metric gets the stratified paired bootstrap.
    """
    missing = sorted(set(base) ^ set(other))
    if missing:
        raise BenchError(
            f"task {task}: {names[0]} and {names[1]} were not scored on the same subtasks (e.g. {missing[0]}); "
            "paired statistics need the same items: rescore both with the same tasks"
        )
    strata = [align(f"{task} ({name})" if group else task, base[name], other[name], names) for name in base]
    if group is None and len(strata) == 1 and is_binary(*strata[0]):
        return mcnemar(*strata[0], level=level)
    return bootstrap(strata, group or pooled_mean, level=level, n_resamples=n_resamples, seed=seed)
