"""The figures the paper reports, as data, so the reproduction table can set them beside ours.

Zbeeb, Hammoud, Ghanem, "Reasoning Vectors" (arXiv:2509.01363), abstract: adding the
vector improves GSM8K (+4.9%), HumanEval (+4.3%), SciQ (+1.7%) and BigBenchHard
(+12.3% "for the 1.5B model"); subtracting it costs 11.8% on GSM8K. This project
reads all five as Qwen2.5-1.5B figures and as differences from the target in
points, and shows them beside our Δ under the plain prompt; the paper names no
GSM8K protocol, so its GSM8K figure stands beside both of ours (CoT and 5-shot),
and its BBH figure beside the 27-task group only. Anything the paper does not
report (other sizes, the think and adversarial conditions) shows as "—".
"""

from __future__ import annotations

import re
from typing import Dict, Optional

from mergekit_reasoning.core.errors import BenchError

SOURCE = "arXiv:2509.01363"

# model size -> direction ("+v" adds the vector, "-v" subtracts it) -> dataset -> Δ in points.
REPORTED: Dict[str, Dict[str, Dict[str, float]]] = {
    "1.5B": {
        "+v": {"gsm8k": 4.9, "humaneval": 4.3, "sciq": 1.7, "bbh": 12.3},
        "-v": {"gsm8k": -11.8},
    },
}
# The setting the reported figures belong to: the plain prompt, unperturbed data.
CONDITION = "plain"
VARIANT = "plain"

_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z])")


def size_of(model_ref: str) -> Optional[str]:
    """`1.5B` for `Qwen/Qwen2.5-1.5B-Instruct` (the size written in the model's name), else None."""
    name = str(model_ref).rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]
    match = _SIZE.search(name)
    return f"{match.group(1)}B" if match else None


def reported(size: Optional[str]) -> Dict[str, Dict[str, float]]:
    """The paper's deltas for one model size; empty when it reports none for that size."""
    return REPORTED.get(size or "", {})


def check_size(size: Optional[str]) -> None:
    if size is not None and size != "none" and size not in REPORTED:
        raise BenchError(
            f"the paper reports no figures for model size {size!r}; sizes with figures: {', '.join(REPORTED)} (or none)"
        )


def _figure(figures: Dict[str, float], task: str, condition: str, variant: str) -> Optional[float]:
    from mergekit_reasoning.bench import registry

    if condition != CONDITION or variant != VARIANT or registry.bbh_subtask(task):
        return None
    return figures.get(registry.dataset(task))


def _signed(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:+.1f}"


def comparison_markdown(document: dict, size: Optional[str], directions: Dict[str, str]) -> str:
    """Headline scores of base, +v and −v with our Δ and the paper's Δ side by side.

    `directions` maps "+v"/"-v" to the model labels that hold them; the baseline
    label of the document is the target.
    """
    from mergekit_reasoning.bench.report import _cell, _delta, primary_scores

    base = document["settings"]["baseline"]
    figures = reported(size)
    head = ["task", "variant", "condition", "n", base]
    for d, label in directions.items():
        head += [label, f"Δ {label}", f"paper Δ {d}"]
    rows: Dict[tuple, Dict[str, dict]] = {}
    for s in primary_scores(document):
        rows.setdefault((s["task"], s["variant"], s["condition"]), {})[s["label"]] = s
    lines = [
        f"## Against the paper ({SOURCE}, Qwen2.5-{size or '?'})" if figures
        else f"## Against the paper ({SOURCE}): no figures for this model size",
        "",
        "Headline metric per task, in percent; Δ in points against "
        f"`{base}`; paper Δ as reported, under the plain prompt; — where the paper gives none.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for (task, variant, cond), by_label in rows.items():
        n = next((r["n"] for r in by_label.values() if r.get("n") is not None), "")
        cells = [task, variant, cond, str(n), _cell(by_label.get(base))]
        for d, label in directions.items():
            cells += [
                _cell(by_label.get(label)),
                _delta(by_label.get(label), by_label.get(base)),
                _signed(_figure(figures.get(d, {}), task, cond, variant)),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
