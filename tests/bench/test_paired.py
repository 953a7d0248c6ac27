"""Paired statistics of a Δ against reference implementations, on fixed tables and edge cases.

McNemar against statsmodels (the test) and Clopper–Pearson from statsmodels (the interval);
the bootstrap against scipy.stats.bootstrap and, stratified, against a plain numpy loop;
the group aggregation against lm-eval's own; the minimum detectable Δ against the
sample-size formula it inverts.
"""

import math

import numpy as np
import pytest

from mergekit_reasoning.bench import paired
from mergekit_reasoning.bench.comparisons import compare_units
from mergekit_reasoning.bench.conditions import Condition
from mergekit_reasoning.core.errors import BenchError

statsmodels = pytest.importorskip("statsmodels")


def _pairs(both, only_base, only_other, neither):
    """Per-item 0/1 outcomes of base and other for a 2×2 table of counts."""
    base = [1] * both + [1] * only_base + [0] * only_other + [0] * neither
    other = [1] * both + [0] * only_base + [1] * only_other + [0] * neither
    return np.array(base, float), np.array(other, float)


TABLES = [(50, 12, 25, 13), (400, 30, 31, 39), (10, 0, 9, 1), (0, 3, 7, 0), (5, 1, 1, 5), (100, 2, 14, 4)]


@pytest.mark.parametrize("table", TABLES)
def test_mcnemar_matches_statsmodels_and_its_interval_inverts_the_test(table):
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    both, only_base, only_other, neither = table
    base, other = _pairs(*table)
    got = paired.mcnemar(base, other)
    ref = mcnemar([[both, only_base], [only_other, neither]], exact=True)
    n, m = sum(table), only_base + only_other
    assert got.method == "exact McNemar" and got.n == n
    assert got.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert got.delta == pytest.approx((only_other - only_base) / n)
    assert (got.better, got.worse) == (only_other, only_base)
    low, high = proportion_confint(only_other, m, alpha=0.05, method="beta")  # Clopper–Pearson
    assert got.ci == pytest.approx((m / n * (2 * low - 1), m / n * (2 * high - 1)), rel=1e-9)
    assert got.significant == (got.p < 0.05)


def test_mcnemar_p_value_is_scipys_binomial_test():
    from scipy.stats import binomtest

    base, other = _pairs(*TABLES[0])
    assert paired.mcnemar(base, other).p == pytest.approx(binomtest(25, 37, 0.5).pvalue, rel=1e-12)


def test_no_discordant_items():
    from statsmodels.stats.proportion import proportion_confint

    base, other = _pairs(30, 0, 0, 20)
    got = paired.mcnemar(base, other)
    assert (got.delta, got.p, got.better, got.worse) == (0.0, 1.0, 0, 0)
    # Not the empty [0, 0]: |Δ| is at most the discordance rate, whose exact upper limit with 0 of 50 is ...
    bound = proportion_confint(0, 50, alpha=0.05, method="beta")[1]
    assert got.ci == pytest.approx((-bound, bound)) and bound == pytest.approx(1 - 0.025 ** (1 / 50))
    assert got.mde is None and not got.significant


def test_all_items_discordant():
    from statsmodels.stats.contingency_tables import mcnemar

    base, other = _pairs(0, 0, 12, 0)  # the other model alone gets every item right
    got = paired.mcnemar(base, other)
    assert got.delta == 1.0 and got.p == pytest.approx(2 * 0.5**12) == pytest.approx(mcnemar([[0, 0], [12, 0]]).pvalue)
    assert got.ci[1] == pytest.approx(1.0) and got.ci[0] == pytest.approx(2 * 0.025 ** (1 / 12) - 1)
    assert got.significant
    split = paired.mcnemar(*_pairs(0, 6, 6, 0))  # every item discordant, half each way
    assert split.delta == 0.0 and split.p == 1.0 and not split.significant


def test_one_item():
    same = paired.mcnemar(np.array([1.0]), np.array([1.0]))
    assert same.n == 1 and same.p == 1.0 and same.ci == pytest.approx((-0.975, 0.975)) and same.mde is None
    flip = paired.mcnemar(np.array([0.0]), np.array([1.0]))
    assert flip.delta == 1.0 and flip.p == 1.0 and not flip.significant and flip.mde is None
    assert flip.ci == pytest.approx((2 * 0.025 - 1, 1.0))
    boot = paired.compare("t", {"t": {0: 0.5}}, {"t": {0: 0.75}})  # one item of a non-0/1 metric
    assert boot.method == "paired bootstrap" and boot.ci is None and boot.p is None and not boot.significant


def test_a_bootstrap_where_no_item_differs_gives_no_interval():
    same = {"a": {0: 0.5, 1: 0.25}, "b": {0: 1.0, 1: 0.0}}
    got = paired.compare("bbh", same, same, group=paired.pooled_mean)
    assert got.delta == 0.0 and got.ci is None and got.p == 1.0 and got.n == 4 and not got.significant


def test_a_metric_that_is_not_0_1_gets_the_bootstrap_like_scipys():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(7)
    base = rng.random(60)
    other = np.clip(base + rng.normal(0.04, 0.1, 60), 0, 1)
    got = paired.compare("humaneval", {"h": dict(enumerate(base))}, {"h": dict(enumerate(other))}, seed=11)
    ref = bootstrap(
        (base, other),
        lambda b, o, axis=-1: o.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=paired.N_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(11),
    )
    assert got.method == "paired bootstrap" and got.seed == 11 and got.strata == 1
    assert got.delta == pytest.approx((other - base).mean())
    assert got.ci == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-9)
    tail = min((ref.bootstrap_distribution <= 0).sum(), (ref.bootstrap_distribution >= 0).sum())
    assert got.p == pytest.approx(min(1, 2 * (tail + 1) / (paired.N_RESAMPLES + 1)))
    assert got.significant == (got.ci[0] > 0 or got.ci[1] < 0)
    assert got.mde == pytest.approx((1.959964 + 0.841621) * ref.standard_error, rel=0.02)
    # The same seed gives the same interval; another seed a slightly different one.
    again = paired.compare("humaneval", {"h": dict(enumerate(base))}, {"h": dict(enumerate(other))}, seed=11)
    assert again == got
    assert (
        paired.compare("humaneval", {"h": dict(enumerate(base))}, {"h": dict(enumerate(other))}, seed=12).ci != got.ci
    )


def test_a_group_is_resampled_within_each_subtask_and_aggregated_as_lm_eval_does():
    from lm_eval.api.metrics import aggregate_subtask_metrics

    rng = np.random.default_rng(3)
    sizes = {"a": 40, "b": 15, "c": 90}
    p_base = {"a": 0.3, "b": 0.8, "c": 0.5}
    base, other = {}, {}
    for name, size in sizes.items():
        b = (rng.random(size) < p_base[name]).astype(float)
        o = np.where(rng.random(size) < 0.25, rng.integers(0, 2, size), b).astype(float)
        base[name], other[name] = dict(enumerate(b)), dict(enumerate(o))
    for weight in (True, False):

        def agg(means, ns, weight=weight):
            return aggregate_subtask_metrics(means, ns, weight)

        got = paired.compare("bbh", base, other, group=agg, seed=5)
        means = lambda d: [np.mean(list(d[k].values())) for k in sizes]  # noqa: E731
        want = aggregate_subtask_metrics(means(other), list(sizes.values()), weight)
        want -= aggregate_subtask_metrics(means(base), list(sizes.values()), weight)
        assert got.method == "paired bootstrap" and got.strata == 3 and got.n == sum(sizes.values())
        assert got.delta == pytest.approx(want)
        # A plain numpy stratified bootstrap (another random stream) gives the same interval, within noise.
        loop = np.random.default_rng(99)
        draws = []
        diffs = {k: np.array(list(other[k].values())) - np.array(list(base[k].values())) for k in sizes}
        for _ in range(4000):
            ms = [diffs[k][loop.integers(0, sizes[k], sizes[k])].mean() for k in sizes]
            draws.append(aggregate_subtask_metrics(ms, list(sizes.values()), weight))
        ref = np.percentile(draws, [2.5, 97.5])
        assert got.ci == pytest.approx(tuple(ref), abs=0.012)


def test_mismatched_item_sets_are_an_error_naming_the_task():
    base, other = {"t": {0: 1.0, 1: 0.0, 2: 1.0}}, {"t": {0: 1.0, 1: 1.0, 3: 0.0}}
    with pytest.raises(BenchError, match=r"task gsm8k_cot: base and plus were not scored on the same items"):
        paired.compare("gsm8k_cot", base, other, names=("base", "plus"))
    with pytest.raises(BenchError, match=r"task bbh \(navigate\): "):
        paired.compare("bbh", {"navigate": base["t"]}, {"navigate": other["t"]}, group=paired.pooled_mean)
    with pytest.raises(BenchError, match=r"task bbh: .* not scored on the same subtasks"):
        paired.compare("bbh", {"navigate": base["t"]}, {"snarks": base["t"]}, group=paired.pooled_mean)


@pytest.mark.parametrize("n, discordant", [(1319, 200), (1000, 40), (250, 250), (6511, 900)])
def test_the_minimum_detectable_delta_solves_connors_sample_size_formula(n, discordant):
    delta = paired.mcnemar_mde(n, discordant)
    psi = discordant / n
    z_a, z_b = 1.959963984540054, 0.8416212335729143
    needed = (z_a * math.sqrt(psi) + z_b * math.sqrt(psi - delta**2)) ** 2 / delta**2
    assert needed == pytest.approx(n, rel=1e-9)
    # More items (same discordance) detect smaller differences.
    assert paired.mcnemar_mde(4 * n, 4 * discordant) < delta


def test_minimum_detectable_delta_has_80_percent_power_by_simulation():
    """Exact McNemar at the MDE, simulated: about 80% of draws reject (the formula is a normal approximation)."""
    n, discordant = 500, 80
    delta = paired.mcnemar_mde(n, discordant)
    psi = discordant / n
    rng = np.random.default_rng(0)
    rejects = 0
    for _ in range(400):
        kinds = rng.choice(3, n, p=[1 - psi, (psi + delta) / 2, (psi - delta) / 2])  # agree, other wins, base wins
        base, other = (kinds == 2).astype(float), (kinds == 1).astype(float)
        rejects += paired.mcnemar(base, other).p < 0.05
    assert 0.72 <= rejects / 400 <= 0.88


def _unit(label, task, records, items, cond="plain"):
    return (label, Condition(cond), task, "plain"), {"records": records, "items": items}


def _rec(value, metric="exact_match", filt="strict-match", subtask=None, n=4):
    return {"subtask": subtask, "n": n, "metric": metric, "filter": filt, "value": value, "stderr": None}


def test_units_are_paired_per_metric_and_documents_are_checked():
    key = "exact_match,strict-match"
    a = {"mkr_gsm8k_cot": {"ids": [0, 1, 2, 3], "docs_sha256": "x", "values": {key: [1, 0, 0, 1]}}}
    b = {"mkr_gsm8k_cot": {"ids": [0, 1, 2, 3], "docs_sha256": "x", "values": {key: [1, 1, 1, 1]}}}
    units = dict([_unit("base", "gsm8k_cot", [_rec(0.5)], a), _unit("plus", "gsm8k_cot", [_rec(1.0)], b)])
    contrast = [("plus", "plain", "base", "plain")]
    (got,), missing = compare_units(contrast, list(units), units)
    assert not missing and got["method"] == "exact McNemar" and got["delta"] == 0.5 and got["better"] == 2
    assert (got["label"], got["baseline"], got["task"], got["metric"], got["filter"]) == (
        "plus",
        "base",
        "gsm8k_cot",
        "exact_match",
        "strict-match",
    )
    # Scored on other documents under the same ids (the data changed between runs): an error, not a join.
    b2 = {"mkr_gsm8k_cot": {**b["mkr_gsm8k_cot"], "docs_sha256": "y"}}
    units = dict([_unit("base", "gsm8k_cot", [_rec(0.5)], a), _unit("plus", "gsm8k_cot", [_rec(1.0)], b2)])
    with pytest.raises(BenchError, match="task gsm8k_cot: base and plus were scored on different documents"):
        compare_units(contrast, list(units), units)
    # A unit cached before items were kept: no comparison, and it is named.
    units = dict([_unit("base", "gsm8k_cot", [_rec(0.5)], None), _unit("plus", "gsm8k_cot", [_rec(1.0)], b)])
    comparisons, missing = compare_units(contrast, list(units), units)
    assert comparisons == [] and missing == ["base gsm8k_cot (plain, plain)"]
