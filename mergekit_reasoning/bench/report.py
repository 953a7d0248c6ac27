"""The markdown comparison table: scores ± standard error, and deltas against the baseline."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from mergekit_reasoning.bench import registry
from mergekit_reasoning.bench.comparisons import cell_key, index

# The metric each task is summarised by in plots and sweeps.
PRIMARY = {
    "gsm8k_cot": ("exact_match", "strict-match"),
    "gsm8k_5shot": ("exact_match", "strict-match"),
    "humaneval": ("pass_at_1", "create_test"),
    "sciq": ("acc_norm", "none"),
    "bbh": ("exact_match", "get-answer"),
    **{f"bbh_{sub}": ("exact_match", "get-answer") for sub in registry.BBH_SUBTASKS},
}


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _cell(rec: Optional[dict]) -> str:
    if rec is None:
        return "–"
    if rec.get("stderr") is None:
        return _pct(rec["value"])
    return f"{_pct(rec['value'])} ± {_pct(rec['stderr'])}"


def _delta(rec: Optional[dict], base: Optional[dict]) -> str:
    if rec is None or base is None or rec["value"] is None or base["value"] is None:
        return "–"
    return f"{100 * (rec['value'] - base['value']):+.1f}"


UP, DOWN = "▲", "▼"


def legend(baseline: str) -> str:
    """The one line that says what a Δ cell's interval and marks mean."""
    return (
        f"Δ [low, high]: Δ in points against `{baseline}` on the same items, with its 95% paired interval; "
        f"{UP}/{DOWN}: the interval lies above/below 0 (exact McNemar for 0/1 outcomes, a seeded paired "
        "bootstrap stratified by subtask for BBH and other metrics; p-values and the smallest detectable Δ "
        "are under Paired comparisons)."
    )


def _pts(value: float) -> str:
    return f"{100 * value:+.1f}"


def mark(ci) -> str:
    """▲ where the interval lies above 0, ▼ below, nothing where it holds 0 (or there is none)."""
    if ci is None:
        return ""
    return f" {UP}" if ci[0] > 0 else f" {DOWN}" if ci[1] < 0 else ""


def delta_cell(rec: Optional[dict], base: Optional[dict], comparison: Optional[dict] = None) -> str:
    """Δ in points, and where the per-item outcomes give one, its paired interval and mark."""
    text = _delta(rec, base)
    if text == "–" or comparison is None or comparison.get("ci") is None:
        return text
    low, high = comparison["ci"]
    return f"{text}{mark(comparison['ci'])} [{_pts(low)}, {_pts(high)}]"


def p_text(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _rows(scores: List[dict], subtasks: bool) -> Dict[Tuple, Dict[str, dict]]:
    rows: Dict[Tuple, Dict[str, dict]] = {}
    for s in scores:
        if (s["subtask"] is not None) != subtasks:
            continue
        key = (s["task"], s.get("subtask") or "", s["variant"], f"{s['metric']} ({s['filter']})", s["condition"])
        rows.setdefault(key, {})[s["label"]] = s
    return rows


def _table(rows, labels: List[str], baseline: str, first_col: str, paired: Optional[dict] = None) -> List[str]:
    others = [label for label in labels if label != baseline]
    head = [first_col, "variant", "metric", "condition", "n", baseline]
    for label in others:
        head += [label, f"Δ {label}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, sub, variant, metric, cond), by_label in rows.items():
        base = by_label.get(baseline)
        n = next((r["n"] for r in by_label.values() if r.get("n") is not None), "")
        cells = [sub or task, variant, metric, cond, str(n), _cell(base)]
        for label in others:
            rec = by_label.get(label)
            comparison = None
            if rec is not None and paired:
                comparison = paired.get(
                    cell_key(label, cond, baseline, cond, task, variant, rec["subtask"], rec["metric"], rec["filter"])
                )
            cells += [_cell(rec), delta_cell(rec, base, comparison)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparisons_table(comparisons: List[dict]) -> List[str]:
    """Every task-level Δ with its paired statistics: interval, p-value, method, discordant items, MDE."""
    head = ["task", "variant", "metric", "condition", "model", "against", "n", "Δ", "95% CI", "p", "method"]
    head += ["better / worse", "MDE (80% power)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        if c["subtask"] is not None:
            continue
        against = (
            c["baseline"]
            if c["baseline_condition"] == c["condition"]
            else f"{c['baseline']} ({c['baseline_condition']})"
        )
        ci = "–" if c["ci"] is None else f"[{_pts(c['ci'][0])}, {_pts(c['ci'][1])}]"
        method = c["method"] + (f", {c['strata']} strata" if (c.get("strata") or 1) > 1 else "")
        counts = f"{c['better']} / {c['worse']}" if c.get("better") is not None else "–"
        mde = "–" if c.get("mde") is None else f"{100 * c['mde']:.1f}"
        cells = [c["task"], c["variant"], f"{c['metric']} ({c['filter']})", c["condition"], c["label"], against]
        cells += [str(c["n"]), _pts(c["delta"]) + mark(c["ci"]), ci, p_text(c["p"]), method, counts, mde]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_section(document: dict) -> List[str]:
    """## Paired comparisons: the table above's Δs with their statistics, and what MDE means."""
    comparisons = document.get("comparisons") or []
    lines: List[str] = []
    if any(c["subtask"] is None for c in comparisons):
        stats = document.get("statistics") or {}
        lines += [
            "",
            "## Paired comparisons",
            "",
            "Δ and its 95% interval in points, per-item paired; better / worse: items only the model / only the "
            "baseline gets right (0/1 outcomes); MDE: the smallest |Δ| this many items detect with 80% power at the "
            "5% level, given the observed discordance (bootstrap: the observed spread), so a |Δ| below it says "
            f"little either way. Bootstrap: {stats.get('n_resamples', '')} resamples, seed {stats.get('seed', '')}.",
            "",
        ]
        lines += comparisons_table(comparisons)
    missing = (document.get("statistics") or {}).get("units_without_items") or []
    if missing:
        lines += [
            "",
            f"No paired interval where a score was cached before per-item outcomes were kept ({len(missing)} "
            f"units, e.g. {missing[0]}): delete OUT/cache to rescore them.",
        ]
    return lines


def _sources(source: dict) -> List[dict]:
    """The per-file records of one task's data entry (the BBH group holds one per subtask)."""
    if "origin" in source or "error" in source:
        return [source]
    return [v for v in source.values() if isinstance(v, dict)]


def data_line(document: dict) -> str:
    """Which split of which source each dataset was scored on, e.g. `SciQ: validation (local)`."""
    s = document["settings"]
    found: Dict[str, List[str]] = {}
    for task, source in (document.get("data") or {}).items():
        if task not in registry.TASKS:
            continue
        name = registry.DATASET_NAMES[registry.dataset(task)]
        for rec in _sources(source):
            if "split" not in rec:  # an older results file, or a source that could not be read
                return s["data_source"]
            where = "local" if rec["origin"] == "local" else f"hub {rec['hub']}"
            text = f"{rec['split']} ({where})"
            if text not in found.setdefault(name, []):
                found[name].append(text)
    return "; ".join(f"{name}: {', '.join(texts)}" for name, texts in found.items()) or s["data_source"]


def markdown_table(document: dict) -> str:
    """Scores in percent (± standard error) per task, metric and condition; Δ in points vs the baseline."""
    labels = list(document["models"])
    baseline = document["settings"]["baseline"]
    s = document["settings"]
    lines = [
        "# Benchmark results",
        "",
        f"Scores in percent ± standard error; Δ in points against `{baseline}`. "
        f"Data: {data_line(document)}; limit: {s['limit'] or 'none'}.",
        "",
        legend(baseline),
        "",
    ]
    paired = index(document.get("comparisons") or [])
    lines += _table(_rows(document["scores"], False), labels, baseline, "task", paired)
    sub_rows = _rows(document["scores"], True)
    if sub_rows:
        lines += ["", "## Per subtask", ""]
        lines += _table(sub_rows, labels, baseline, "subtask", paired)
    lines += paired_section(document)
    if s.get("sandbox"):
        lines += ["", f"HumanEval sandbox: {s['sandbox']}."]
    return "\n".join(lines) + "\n"


def primary_scores(document: dict) -> List[dict]:
    """One record per (label, condition, task, variant): the task's headline metric."""
    out = []
    for s in document["scores"]:
        if s["subtask"] is None and PRIMARY.get(s["task"]) == (s["metric"], s["filter"]):
            out.append(s)
    return out
