"""User-facing task names and the lm-eval task configs (in ./tasks) behind them."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from .errors import BenchError

TASKS_DIR = Path(__file__).parent / "tasks"

BBH_SUBTASKS = tuple(
    sorted(p.stem.removeprefix("mkr_bbh_cot_fewshot_") for p in TASKS_DIR.glob("mkr_bbh_cot_fewshot_*.yaml"))
)

# name -> (lm-eval task or group, dataset, adversarial variant or None)
TASKS: Dict[str, Tuple[str, str, str | None]] = {
    "gsm8k_cot": ("mkr_gsm8k_cot", "gsm8k", "mkr_gsm8k_cot_adv"),
    "gsm8k_5shot": ("mkr_gsm8k", "gsm8k", "mkr_gsm8k_adv"),
    "humaneval": ("mkr_humaneval", "humaneval", None),
    "sciq": ("mkr_sciq", "sciq", None),
    "bbh": ("mkr_bbh_cot_fewshot", "bbh", None),
}
ALIASES = {"gsm8k": ("gsm8k_cot", "gsm8k_5shot")}


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
            known = ", ".join(sorted([*TASKS, *ALIASES]))
            raise BenchError(f"unknown task {raw!r}; known tasks: {known}")
        for n in ALIASES.get(name, (name,)):
            if n not in out:
                out.append(n)
    if not out:
        raise BenchError("no tasks given")
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


def check_data(task: str, data_dir) -> None:
    """Raise BenchError naming the first local file a task needs but cannot find."""
    from . import data

    dataset = TASKS[task][1]
    subsets = BBH_SUBTASKS if dataset == "bbh" else (None,)
    for subset in subsets:
        data.local_files(dataset, Path(data_dir), subset)


def data_source(task: str, data_dir) -> dict:
    from . import data

    dataset = TASKS[task][1]
    if dataset == "bbh":
        return {s: data.source("bbh", data_dir, s) for s in BBH_SUBTASKS}
    return data.source(dataset, data_dir)
