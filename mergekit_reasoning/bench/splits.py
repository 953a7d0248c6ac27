"""`tune`'s dev and test splits: the items λ is searched on, and the held-out items it is judged on.

Dev and test never share an item, and every item id (`<split>:<row>` of the published
files) is recorded. Per dataset:

- GSM8K (both protocols): dev is a seeded sample of the train file; test is the test split.
  Every dev item is also taken out of the 5-shot prompt's pool of examples (the train
  split), so no dev item is ever shown as an example, to itself or to another.
- BBH: each subtask's rows, shuffled by the seed; one half is dev, the other half test.
- SciQ: dev from another split than the test split (validation when the test file exists,
  else train), or a seeded half when the source holds one split only (the offline copy
  ships validation.jsonl alone).
- HumanEval: 164 problems are too few to split; it can be reported on the winner (its
  whole test split), never searched on.

Dev items whose text is one of the prompt's fixed few-shot examples (GSM8K's 8 CoT
examples, BBH's 3 per subtask) are left out. The dev order is seeded, and a rung of the
search is a prefix of it, so the first rung's items are part of every later one.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional

from mergekit_reasoning.bench import data, registry
from mergekit_reasoning.core.errors import BenchError

REPORT_ONLY = {"humaneval": 164}  # dataset -> its size, too small to split
_TEXT_FIELD = {"gsm8k": "question", "bbh": "input", "sciq": "question"}


@dataclass(frozen=True)
class Stratum:
    """One lm-eval task's items (a BBH subtask is one stratum of the bbh group)."""

    key: str  # data.serve_key, e.g. gsm8k, bbh/navigate
    lm_task: str  # the lm-eval task scored on it
    dev: List[str]  # item ids, in the seeded order rungs take prefixes of
    test: List[str]
    dev_source: str
    test_source: str
    excluded: List[str] = field(default_factory=list)  # dev candidates equal to a few-shot example
    hold_out: List[str] = field(default_factory=list)  # taken out of the prompt's example pool on dev


@dataclass(frozen=True)
class TaskSplit:
    task: str
    strata: List[Stratum]

    def dev_size(self) -> int:
        return sum(len(s.dev) for s in self.strata)

    def test_size(self) -> int:
        return sum(len(s.test) for s in self.strata)


def check_searchable(task: str) -> None:
    dataset = registry.dataset(task)
    if dataset in REPORT_ONLY:
        raise BenchError(
            f"{task} cannot be searched on: its {REPORT_ONLY[dataset]} problems are too few to split into dev "
            f"and test items; report it on the winner instead (--report {task})"
        )


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _exemplars(lm_task: str, dataset: str) -> set:
    """The texts of the prompt's fixed few-shot examples (none for a prompt that draws them from data)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # `!function` hooks: not needed here
    path = registry.TASKS_DIR / f"{lm_task}.yaml"
    config = yaml.load(path.read_text(), Loader=Loader) or {}
    samples = (config.get("fewshot_config") or {}).get("samples") or []
    text_field = _TEXT_FIELD.get(dataset)
    return {_normal(s[text_field]) for s in samples if isinstance(s, dict) and text_field in s}


def _shuffled(n: int, seed: int, key: str) -> List[int]:
    order = list(range(n))
    random.Random(f"{seed}/{key}").shuffle(order)  # a string seed is hashed deterministically (sha512)
    return order


def _texts(dataset: str, data_dir: Optional[str], subset: Optional[str], split: str) -> List[str]:
    ds = data._load_published(dataset, data_dir, subset, all_splits=True)
    text_field = _TEXT_FIELD.get(dataset)
    return [_normal(row.get(text_field, "")) for row in ds[split]] if text_field else [""] * len(ds[split])


def _stratum(task: str, subset: Optional[str], data_dir, seed: int, dev_size: Optional[int], test_size) -> Stratum:
    dataset = registry.dataset(task)
    lm_task = registry.lm_eval_name(task) if subset is None or task != "bbh" else f"{registry.BBH_PREFIX}_{subset}"
    key = data.serve_key(dataset, subset)
    sizes = data.splits_of(dataset, data_dir, subset)
    if dataset in REPORT_ONLY:
        test_split = "test"
        test = [f"{test_split}:{i}" for i in range(sizes[test_split])][:test_size]
        return Stratum(key, lm_task, [], test, "", test_split)
    if dataset == "gsm8k":
        dev_split, test_split, half = "train", "test", False
    elif dataset == "sciq":
        test_split = "test" if "test" in sizes else "validation" if "validation" in sizes else "train"
        others = [s for s in ("validation", "train") if s in sizes and s != test_split]
        dev_split, half = (others[0], False) if others else (test_split, True)
    else:  # bbh: one split per subtask
        dev_split, test_split, half = "test", "test", True
    exemplars = _exemplars(lm_task, dataset)
    texts = _texts(dataset, data_dir, subset, dev_split) if exemplars else []
    order = _shuffled(sizes[dev_split], seed, key)
    if half:
        cut = len(order) // 2
        dev_rows, test_rows = order[:cut], sorted(order[cut:])
        dev_source = test_source = f"seeded half of {dev_split} (seed {seed})"
    else:
        dev_rows, test_rows = order, list(range(sizes[test_split]))
        dev_source, test_source = f"{dev_split} (seeded sample, seed {seed})", test_split
    excluded = [f"{dev_split}:{r}" for r in dev_rows if exemplars and texts[r] in exemplars]
    dev = [f"{dev_split}:{r}" for r in dev_rows if f"{dev_split}:{r}" not in set(excluded)][:dev_size]
    test = [f"{test_split}:{r}" for r in test_rows][:test_size]
    if set(dev) & set(test):  # cannot happen by construction; never let it pass
        raise BenchError(f"task {task}: dev and test share items {sorted(set(dev) & set(test))[:3]}")
    hold_out = dev if dev_split == "train" else []
    return Stratum(key, lm_task, dev, test, dev_source, test_source, excluded, hold_out)


def plan(
    searched: Iterable[str],
    reported: Iterable[str],
    data_dir: Optional[str],
    *,
    seed: int = 0,
    dev_size: Optional[int] = None,
    test_size: Optional[int] = None,
) -> Dict[str, TaskSplit]:
    """The dev and test items of every task: `searched` ones get both, `reported` ones (HumanEval) test only.

    `dev_size` and `test_size` cap the items per lm-eval task (each BBH subtask is one,
    as for `--limit`); None takes them all.
    """
    out: Dict[str, TaskSplit] = {}
    searched = list(searched)
    for task in searched:
        check_searchable(task)
    for task in [*searched, *[t for t in reported if t not in searched]]:
        subsets = registry.BBH_SUBTASKS if task == "bbh" else (registry.bbh_subtask(task),)
        out[task] = TaskSplit(task, [_stratum(task, sub, data_dir, seed, dev_size, test_size) for sub in subsets])
        if task in searched and not out[task].dev_size():
            first = out[task].strata[0]
            raise BenchError(f"task {task}: no dev items to search on ({first.key}: {first.dev_source or 'none'})")
    return out


def rung_sizes(n: int, rungs: int, eta: int) -> List[int]:
    """Items of one stratum scored by the end of each rung: n/η^(rungs−1), ..., n/η, n (at least 1 each)."""
    return [max(1, math.ceil(n / eta ** (rungs - 1 - k))) for k in range(rungs)]


def serve_spec(
    split: Dict[str, TaskSplit], role: str, rung: Optional[int] = None, rungs: int = 1, eta: int = 3
) -> dict:
    """data.serving's spec for one role (dev or test) and, on dev, one rung's new items
    (`rung`: its index; the items past the previous rung's prefix, up to this rung's;
    None: every dev item)."""
    spec: Dict[str, dict] = {}
    for task_split in split.values():
        for s in task_split.strata:
            if role == "test":
                rows = s.test
            else:
                if not s.dev:
                    continue
                sizes = rung_sizes(len(s.dev), rungs, eta)
                start = 0 if not rung else sizes[rung - 1]
                rows = s.dev[start : sizes[rung or 0]] if rung is not None else s.dev
            if not rows:
                continue
            entry = spec.setdefault(s.key, {"rows": [], "hold_out": s.hold_out if role == "dev" else []})
            entry["rows"] = list(dict.fromkeys([*entry["rows"], *rows]))
    return spec


def record(split: Dict[str, TaskSplit], seed: int) -> dict:
    """The split as results record it: seed, and per task and stratum every item id."""
    return {"seed": seed, "tasks": {task: [asdict(s) for s in ts.strata] for task, ts in split.items()}}
