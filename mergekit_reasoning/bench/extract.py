"""Answer extraction exactly as scoring does it: the task YAML's lm-eval filter chains.

Used by tests (and handy when debugging prompts): apply every named filter of a
task to one model response and see what exact match will compare.
"""

from __future__ import annotations

from typing import Dict, Optional

from mergekit_reasoning.bench import registry


def _task_config(lm_name: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    path = registry.TASKS_DIR / f"{lm_name}.yaml"
    if not path.exists():  # BBH subtasks share a template that holds the filters
        path = registry.TASKS_DIR / "_mkr_bbh_cot_fewshot_template_yaml"
    cfg = load_yaml(path, resolve_func=True)
    while "filter_list" not in cfg and "include" in cfg:
        cfg = load_yaml(registry.TASKS_DIR / cfg["include"], resolve_func=True)
    return cfg


def extract(task: str, response: str, doc: Optional[dict] = None) -> Dict[str, str]:
    """Filter name -> extracted answer, for a user task name (bbh uses the shared filter)."""
    from lm_eval.api.registry import get_filter

    lm_name = registry.lm_eval_name(task) if task in registry.TASKS else task
    out = {}
    for spec in _task_config(lm_name)["filter_list"]:
        values = [[response]]
        for step in spec["filter"]:
            kwargs = {k: v for k, v in step.items() if k != "function"}
            if step["function"] == "custom":
                values = kwargs["filter_fn"](values, [doc or {}])
                continue
            values = get_filter(step["function"])(**kwargs).apply(values, [doc or {}])
            values = list(values)
        out[spec["name"]] = values[0]
    return out
