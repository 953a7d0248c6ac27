"""The markdown comparison table: scores ± standard error, and deltas against the baseline."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from mergekit_reasoning.bench import registry

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


def _rows(scores: List[dict], subtasks: bool) -> Dict[Tuple, Dict[str, dict]]:
    rows: Dict[Tuple, Dict[str, dict]] = {}
    for s in scores:
        if (s["subtask"] is not None) != subtasks:
            continue
        key = (s["task"], s.get("subtask") or "", s["variant"], f"{s['metric']} ({s['filter']})", s["condition"])
        rows.setdefault(key, {})[s["label"]] = s
    return rows


def _table(rows, labels: List[str], baseline: str, first_col: str) -> List[str]:
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
            cells += [_cell(by_label.get(label)), _delta(by_label.get(label), base)]
        lines.append("| " + " | ".join(cells) + " |")
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
    ]
    lines += _table(_rows(document["scores"], False), labels, baseline, "task")
    sub_rows = _rows(document["scores"], True)
    if sub_rows:
        lines += ["", "## Per subtask", ""]
        lines += _table(sub_rows, labels, baseline, "subtask")
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
