"""The figures the paper reports, as data, each under the condition its source puts it, so the
reproduction table can set them beside ours.

Zbeeb, Hammoud, Ghanem, "Reasoning Vectors" (arXiv:2509.01363). Two sources were read:

- SUMMARY, a published summary of the paper ("Papers Explained 488: Reasoning Vectors",
  2025-11-07). It describes four conditions for the 1.5B and 7B experiments: Baseline (the
  instruct target, plain prompt), G+T (the GRPO donor prompted "Think step by step"),
  +Vector (target + v, α = 1, plain prompt) and +Vector+Think (the same with the think
  prompt). For 1.5B: +Vector GSM8K +2.6, HumanEval +2.2, BBH +12.3; +Vector+Think GSM8K
  +4.9, HumanEval +4.3, BBH +12.3. For 7B: GSM8K +5.0 with vector and prompt.
- ABSTRACT, the arXiv abstract: adding the vector improves GSM8K (+4.9%), HumanEval
  (+4.3%), SciQ (+1.7%) and BigBenchHard (+12.3% "for the 1.5B model"); subtracting it
  costs 11.8% on GSM8K. It names no condition. Its +4.9, +4.3 and +12.3 are the summary's
  +Vector+Think figures and are filed there; SciQ +1.7 and GSM8K −11.8 appear in the abstract
  only, so their condition is not stated (`prompt=None`), and they are read, as before, as
  1.5B figures.

Every Δ is in points against Baseline, the target under the plain prompt, the think rows
included. The paper names no GSM8K protocol, so a GSM8K figure stands beside both of ours
(CoT and 5-shot); a BBH figure beside the 27-task group only. Anything neither source
reports (the distractors, the chat template, one BBH task alone, other sizes) shows as "—".
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from mergekit_reasoning.core.errors import BenchError

SOURCE = "arXiv:2509.01363"
SUMMARY = "Papers Explained 488: Reasoning Vectors, 2025-11-07"
ABSTRACT = "arXiv:2509.01363 abstract"
SOURCES = {SUMMARY: "S", ABSTRACT: "A"}  # the keys the table's source column uses
PROMPTS = ("plain", "think")  # the paper's two prompts; our conditions of the same names


@dataclass(frozen=True)
class Figure:
    size: str  # the paper's model size, e.g. 1.5B
    direction: str  # "+v" adds the vector, "-v" subtracts it
    dataset: str  # registry.dataset() of the task: gsm8k, humaneval, sciq, bbh
    prompt: Optional[str]  # "plain" (+Vector) or "think" (+Vector+Think); None: the source does not say
    delta: float  # points against the target under the plain prompt
    source: str


FIGURES = (
    Figure("1.5B", "+v", "gsm8k", "plain", 2.6, SUMMARY),
    Figure("1.5B", "+v", "humaneval", "plain", 2.2, SUMMARY),
    Figure("1.5B", "+v", "bbh", "plain", 12.3, SUMMARY),
    Figure("1.5B", "+v", "gsm8k", "think", 4.9, SUMMARY),
    Figure("1.5B", "+v", "humaneval", "think", 4.3, SUMMARY),
    Figure("1.5B", "+v", "bbh", "think", 12.3, SUMMARY),
    Figure("1.5B", "+v", "sciq", None, 1.7, ABSTRACT),
    Figure("1.5B", "-v", "gsm8k", None, -11.8, ABSTRACT),
    Figure("7B", "+v", "gsm8k", "think", 5.0, SUMMARY),
)
# The target the paper's figures of each size were measured on (the summary's Baseline).
TARGETS = {"1.5B": "Qwen/Qwen2.5-1.5B-Instruct", "7B": "Qwen/Qwen2.5-7B-Instruct"}
SIZES = tuple(dict.fromkeys(f.size for f in FIGURES))

_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z])")


def size_of(model_ref: str) -> Optional[str]:
    """`1.5B` for `Qwen/Qwen2.5-1.5B-Instruct` (the size written in the model's name), else None."""
    name = str(model_ref).rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]
    match = _SIZE.search(name)
    return f"{match.group(1)}B" if match else None


def figures(size: Optional[str]) -> List[Figure]:
    """The paper's figures for one model size; empty when it reports none for that size."""
    return [f for f in FIGURES if f.size == size]


def reported(size: Optional[str]) -> List[dict]:
    """`figures(size)` as plain data, for results.json."""
    return [{k: v for k, v in asdict(f).items() if k != "size"} for f in figures(size)]


def check_size(size: Optional[str]) -> None:
    if size is not None and size != "none" and size not in SIZES:
        raise BenchError(
            f"the paper reports no figures for model size {size!r}; sizes with figures: {', '.join(SIZES)} (or none)"
        )


def plain_counterpart(condition: str) -> str:
    """The condition a row's paper-style Δ is taken against: the same one with the plain prompt."""
    from mergekit_reasoning.bench.conditions import Condition, parse_condition

    return Condition("plain", parse_condition(condition).chat).name


def _figures_for(found: List[Figure], direction: str, task: str, condition: str, variant: str) -> List[Figure]:
    from mergekit_reasoning.bench import registry

    if condition not in PROMPTS or variant != "plain" or registry.bbh_subtask(task):
        return []
    dataset = registry.dataset(task)
    return [f for f in found if f.direction == direction and f.dataset == dataset and f.prompt in (condition, None)]


def _cell(figs: List[Figure]) -> str:
    return " ".join(f"{f.delta:+.1f}" + ("*" if f.prompt is None else "") for f in figs) or "—"


def comparison_markdown(
    document: dict,
    size: Optional[str],
    directions: Dict[str, str],
    *,
    donor: Optional[str] = None,
    target: Optional[str] = None,
) -> str:
    """Headline scores of base, +v and −v (and the donor, G+T) with our Δ and the paper's Δ side by side.

    `directions` maps "+v"/"-v" to the model labels that hold them; the baseline label of
    the document is the target. Each model gets two Δ: against the target under the same
    prompt, and against the target under the plain prompt, which is how the paper reports
    every figure. `donor` labels the GRPO donor scored as a reference (the paper's G+T row);
    `target` is the recipe's target, named when it is not the model the figures are for.
    """
    from mergekit_reasoning.bench.comparisons import cell_key, index
    from mergekit_reasoning.bench.report import _cell as score_cell
    from mergekit_reasoning.bench.report import delta_cell, legend, primary_scores

    base = document["settings"]["baseline"]
    found = figures(size)
    head = ["task", "variant", "condition", "n", base]
    for d, label in directions.items():
        head += [label, f"Δ {label}", f"Δ {label} vs plain {base}", f"paper Δ {d}"]
    if donor:
        head += [donor, f"Δ {donor} vs plain {base}"]
    head.append("source")
    rows: Dict[tuple, Dict[str, dict]] = {}
    for s in primary_scores(document):
        rows.setdefault((s["task"], s["variant"], s["condition"]), {})[s["label"]] = s
    paired = index(document.get("comparisons") or [])

    def delta(label, cond, rec, base_rec, base_cond):
        if rec is None:
            return delta_cell(rec, base_rec)
        key = cell_key(label, cond, base, base_cond, rec["task"], rec["variant"], None, rec["metric"], rec["filter"])
        return delta_cell(rec, base_rec, paired.get(key))

    figures_for = TARGETS.get(size or "")
    lines = [
        f"## Against the paper ({SOURCE}, Qwen2.5-{size or '?'})"
        if found
        else f"## Against the paper ({SOURCE}): no figures for this model size",
        "",
        "Headline metric per task, in percent. Δ: in points against "
        f"`{base}` under the same prompt; Δ vs plain: against `{base}` under the plain prompt, as the paper "
        "reports every figure, the think rows included; paper Δ as reported, under the prompt of the row; "
        "— where the paper gives none.",
        "",
        legend(base),
    ]
    if figures_for and target and target.split("@", 1)[0] != figures_for:
        lines += ["", f"The paper's figures are for the target {figures_for}; this recipe's target is {target}."]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, variant, cond), by_label in rows.items():
        plain = rows.get((task, variant, plain_counterpart(cond)), {}).get(base)
        n = next((r["n"] for r in by_label.values() if r.get("n") is not None), "")
        cells = [task, variant, cond, str(n), score_cell(by_label.get(base))]
        shown: List[Figure] = []
        for d, label in directions.items():
            figs = _figures_for(found, d, task, cond, variant)
            shown += figs
            rec = by_label.get(label)
            cells += [
                score_cell(rec),
                delta(label, cond, rec, by_label.get(base), cond),
                delta(label, cond, rec, plain, plain_counterpart(cond)),
                _cell(figs),
            ]
        if donor:
            rec = by_label.get(donor)
            cells += [score_cell(rec), delta(donor, cond, rec, plain, plain_counterpart(cond))]
        cells.append(", ".join(f"[{SOURCES[s]}]" for s in dict.fromkeys(f.source for f in shown)) or "—")
        lines.append("| " + " | ".join(cells) + " |")
    if found:
        lines += [
            "",
            "Sources: "
            + "; ".join(f"[{key}] {name}" for name, key in SOURCES.items())
            + ". * the source does not state the condition: the figure stands beside both prompts.",
        ]
    return "\n".join(lines) + "\n"
