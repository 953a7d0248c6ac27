"""PNG plots: headline scores per model, each Δ with its paired interval, and score-versus-λ lines for a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from mergekit_reasoning.bench.report import primary_scores


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    """Lay the figure out, write it as a PNG at `path` (its folder made) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series_name(s: dict) -> str:
    """Task (variant) [condition], metric (filter): what a bar, line or row shows."""
    name = s["task"] + (" (adversarial)" if s["variant"] != "plain" else "")
    name = name if s["condition"] == "plain" else f"{name} [{s['condition']}]"
    return f"{name}, {s['metric']} ({s['filter']})"


def plot_scores(document: dict, path: Path) -> Path:
    """Grouped bars: one group per task (and condition), one bar per model label, stderr whiskers."""
    plt = _pyplot()
    labels = list(document["models"])
    scores = primary_scores(document)
    groups: List[str] = []
    for s in scores:
        if _series_name(s) not in groups:
            groups.append(_series_name(s))
    fig, ax = plt.subplots(figsize=(min(24, 3 + 0.4 * len(groups) * max(1, len(labels))), 4.5))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        by_group = {_series_name(s): s for s in scores if s["label"] == label}
        xs = [g + i * width for g in range(len(groups))]
        vals = [100 * (by_group[g]["value"] or 0) if g in by_group else 0 for g in groups]
        errs = [100 * (by_group[g].get("stderr") or 0) if g in by_group else 0 for g in groups]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=label)
    ax.set_xticks([g + width * (len(labels) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylabel("headline metric (%), ± standard error")
    ax.legend()
    return _save(plt, fig, path)


def plot_sweep(document: dict, lambdas: Dict[str, float], path: Path) -> Path:
    """Score against λ, one line per task (and variant/condition), with stderr bands."""
    plt = _pyplot()
    lines: Dict[str, list] = {}
    for s in primary_scores(document):
        if s["label"] in lambdas:
            lines.setdefault(_series_name(s), []).append((lambdas[s["label"]], s))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in lines.items():
        points.sort(key=lambda p: p[0])
        xs = [p[0] for p in points]
        ys = [100 * (p[1]["value"] or 0) for p in points]
        es = [100 * (p[1].get("stderr") or 0) for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, [y - e for y, e in zip(ys, es)], [y + e for y, e in zip(ys, es)], alpha=0.15)
    ax.set_xlabel("λ")
    ax.set_ylabel("headline metric (%), ± standard error")
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_deltas(document: dict, path: Path) -> Path:
    """Each headline Δ against the baseline with its 95% paired interval: one row per task,
    variant and condition, one marker per model, zero marked; the metric named on the axis."""
    from mergekit_reasoning.bench.report import PRIMARY

    plt = _pyplot()
    baseline = document["settings"]["baseline"]
    labels = [label for label in document["models"] if label != baseline]
    shown = [
        c
        for c in document.get("comparisons") or []
        if c["subtask"] is None
        and c["baseline"] == baseline
        and c["baseline_condition"] == c["condition"]
        and PRIMARY.get(c["task"]) == (c["metric"], c["filter"])
    ]
    rows: List[str] = []
    for c in shown:
        if _series_name(c) not in rows:
            rows.append(_series_name(c))
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.45 * max(1, len(rows)) * max(1, len(labels)) ** 0.5))
    step = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        mine = {_series_name(c): c for c in shown if c["label"] == label}
        ys = [r - 0.4 + step * (i + 0.5) for r, name in enumerate(rows) if name in mine]
        cs = [mine[name] for name in rows if name in mine]
        xs = [100 * c["delta"] for c in cs]
        lo = [100 * (c["delta"] - c["ci"][0]) if c["ci"] else 0 for c in cs]
        hi = [100 * (c["ci"][1] - c["delta"]) if c["ci"] else 0 for c in cs]
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, label=label)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ against {baseline}, points of each row's metric (95% paired interval)")
    if labels:
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_objective(trials: List[dict], space, document: dict, path: Path) -> Path:
    """The dev objective against λ, one panel per λ parameter (one for a global λ): each trial at the
    last rung it reached (pruned ones hollow), the winner starred."""
    plt = _pyplot()
    names = list(space.names)
    scored = [t for t in trials if t["rung_values"] and "duplicate_of" not in t and t["params"]]
    winner = document["winner"]["trial"]
    objective = " + ".join(f"{w:g}·{t}" for t, w in document["settings"]["objective"].items())
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        full = [t for t in scored if t["state"] == "COMPLETE"]
        cut = [t for t in scored if t["state"] != "COMPLETE"]
        last = lambda t: 100 * t["rung_values"][-1]  # noqa: E731
        ax.scatter([t["params"][name] for t in full], [last(t) for t in full], label="every dev item")
        ax.scatter(
            [t["params"][name] for t in cut],
            [last(t) for t in cut],
            facecolors="none",
            edgecolors="grey",
            label="pruned (its last rung)",
        )
        best = [t for t in scored if t["number"] == winner]
        ax.scatter(
            [t["params"][name] for t in best], [last(t) for t in best], marker="*", s=220, c="red", label="winner"
        )
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(name if name != "lambda" else "λ")
    axes[0][0].set_ylabel(f"dev objective (%): {objective}")
    axes[0][-1].legend(fontsize=7)
    return _save(plt, fig, path)
