"""User-facing task names and the lm-eval task configs (in ./tasks) behind them."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Dict, List, Tuple

from mergekit_reasoning.core.errors import BenchError

TASKS_DIR = Path(__file__).parent / "tasks"
BBH_PREFIX = "mkr_bbh_cot_fewshot"

BBH_SUBTASKS = tuple(sorted(p.stem.removeprefix(f"{BBH_PREFIX}_") for p in TASKS_DIR.glob(f"{BBH_PREFIX}_*.yaml")))

# name -> (lm-eval task or group, dataset, adversarial variant or None)
TASKS: Dict[str, Tuple[str, str, str | None]] = {
    "gsm8k_cot": ("mkr_gsm8k_cot", "gsm8k", "mkr_gsm8k_cot_adv"),
    "gsm8k_5shot": ("mkr_gsm8k", "gsm8k", "mkr_gsm8k_adv"),
    "humaneval": ("mkr_humaneval", "humaneval", None),
    "sciq": ("mkr_sciq", "sciq", None),
    "bbh": (BBH_PREFIX, "bbh", None),
    # One BBH subtask alone, e.g. bbh_navigate: the same config the group runs.
    **{f"bbh_{sub}": (f"{BBH_PREFIX}_{sub}", "bbh", None) for sub in BBH_SUBTASKS},
}
ALIASES = {"gsm8k": ("gsm8k_cot", "gsm8k_5shot")}

# How datasets are named in tables.
DATASET_NAMES = {"gsm8k": "GSM8K", "humaneval": "HumanEval", "sciq": "SciQ", "bbh": "BBH"}
_SPLITS = ("train", "validation", "test")


def bbh_subtask(task: str) -> str | None:
    """`navigate` for `bbh_navigate`; None for the group and for other tasks."""
    return task.removeprefix("bbh_") if task.startswith("bbh_") and task in TASKS else None


def _unknown(raw: str) -> BenchError:
    """One line: the closest valid names first, then every valid name."""
    valid = [n for n in sorted([*TASKS, *ALIASES]) if not n.startswith("bbh_")]
    close = difflib.get_close_matches(raw.strip().lower(), [*TASKS, *ALIASES], n=3, cutoff=0.75)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return BenchError(
        f"unknown task {raw!r}; {hint}known tasks: {', '.join(valid)}, "
        f"or one BBH subtask as bbh_<name>: {', '.join('bbh_' + s for s in BBH_SUBTASKS)}"
    )


def expand(names) -> List[str]:
    """Task names (a list or a comma-separated string) with aliases expanded, in order, unique."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: List[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in TASKS and name not in ALIASES:
            raise _unknown(raw)
        for n in ALIASES.get(name, (name,)):
            if n not in out:
                out.append(n)
    if not out:
        raise BenchError("no tasks given")
    inside = [n for n in out if bbh_subtask(n)]
    if "bbh" in out and inside:  # lm-eval refuses a task twice in one run
        raise BenchError(
            f"{inside[0]} is part of bbh, which scores it too (see the per-subtask table); give one or the other"
        )
    return out


def lm_eval_name(task: str, variant: str = "plain") -> str:
    name, _, adv = TASKS[task]
    if variant == "adversarial":
        if adv is None:
            raise BenchError(f"task {task!r} has no adversarial variant")
        return adv
    return name


def variants(task: str, adversarial: bool) -> List[str]:
    """'plain', plus 'adversarial' where asked for and the task has one."""
    return ["plain", "adversarial"] if adversarial and TASKS[task][2] else ["plain"]


def group_subtask_names(task: str) -> Dict[str, str]:
    """lm-eval task name -> subtask name, for a group (bbh); empty for a plain task."""
    if task != "bbh":
        return {}
    return {f"{BBH_PREFIX}_{sub}": sub for sub in BBH_SUBTASKS}


def group_weight_by_size(task: str, metric: str, filt: str) -> bool:
    """How lm-eval aggregates `metric` (`filt`) over a group's subtasks: weighted by their
    sizes (a pooled mean over items) or not (a mean of subtask means), as the group's
    config says in its aggregate_metric_list."""
    import yaml

    name = TASKS[task][0]
    config = yaml.safe_load((TASKS_DIR / f"_{name}.yaml").read_text())
    for entry in config.get("aggregate_metric_list", []):
        filters = entry.get("filter_list", "none")
        filters = [filters] if isinstance(filters, str) else list(filters)
        if entry["metric"] == metric and filt in filters:
            return bool(entry.get("weight_by_size", True))
    raise BenchError(f"group {task}: its config does not aggregate {metric} ({filt})")


def dataset(task: str) -> str:
    return TASKS[task][1]


def _subsets(task: str) -> tuple:
    if task == "bbh":
        return BBH_SUBTASKS
    return (bbh_subtask(task),)


def check_data(task: str, data_dir) -> None:
    """Raise BenchError naming the first local file a task needs but cannot find."""
    from mergekit_reasoning.bench import data

    for subset in _subsets(task):
        data.local_files(dataset(task), Path(data_dir), subset)


def _scored_split(files: dict) -> str:
    """The split lm-eval scores (the YAMLs' `test_split`), named after the file that fills it.

    A local file named like a split (sciq/validation.jsonl) is that split; other
    files (bbh/<task>.json, HumanEval.jsonl.gz) hold their dataset's only split, test.
    """
    stem = Path(files["test"]).name.split(".")[0]
    return stem if stem in _SPLITS else "test"


def data_source(task: str, data_dir) -> dict:
    """Where a task's data is read from and which split is scored, for results.json and table.md.

    Local: {split: file, ..., "origin": "local", "split": scored split}; hub:
    {"hub": id, "config": ..., "origin": "hub", "split": "test"}; the BBH group maps
    each subtask to such a record.
    """
    from mergekit_reasoning.bench import data

    def one(subset):
        src = data.source(dataset(task), data_dir, subset)
        if data_dir:
            return {**src, "origin": "local", "split": _scored_split(src)}
        return {**src, "origin": "hub", "split": "test"}

    if task == "bbh":
        return {s: one(s) for s in BBH_SUBTASKS}
    return one(bbh_subtask(task))
