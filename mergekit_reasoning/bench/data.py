"""Benchmark data: the Hugging Face hub by default, local copies under `--data-dir`.

The local layout is that of the project's offline copies (`../shared/data`):
gsm8k/{train,test}.jsonl, bbh/<subtask>.json, humaneval/HumanEval.jsonl.gz and
sciq/{test or validation}.jsonl. Each loader returns a `datasets.DatasetDict`
whose split names match the task YAMLs, so lm-eval never knows the source.
"""

from __future__ import annotations

import gzip
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

from mergekit_reasoning.core.errors import BenchError

# Hub dataset ids (and configs) that lm-evaluation-harness itself uses.
HUB = {
    "gsm8k": ("openai/gsm8k", "main"),
    "bbh": ("SaylorTwift/bbh", None),
    "humaneval": ("openai/openai_humaneval", None),
    "sciq": ("allenai/sciq", None),
}


def local_files(dataset: str, data_dir: Path, subset: Optional[str] = None) -> Dict[str, Path]:
    """Split name -> local file for one dataset; raises BenchError naming a missing file."""
    root = Path(data_dir)
    if dataset == "gsm8k":
        files = {"train": root / "gsm8k/train.jsonl", "test": root / "gsm8k/test.jsonl"}
    elif dataset == "bbh":
        files = {"test": root / "bbh" / f"{subset}.json"}
    elif dataset == "humaneval":
        files = {"test": root / "humaneval/HumanEval.jsonl.gz"}
    elif dataset == "sciq":
        # lm-eval scores the test split; the offline copy ships validation (same format).
        test = root / "sciq/test.jsonl"
        files = {"test": test if test.exists() else root / "sciq/validation.jsonl"}
    else:
        raise BenchError(f"unknown dataset {dataset!r}")
    for split, path in files.items():
        if not path.is_file():
            raise BenchError(f"missing data file: {path} (needed for {dataset} {split} split)")
    return files


def read_rows(path: Path) -> List[dict]:
    """Rows of a .jsonl, .jsonl.gz or BBH-style .json ({"examples": [...]}) file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.suffix == ".json":
            return json.load(f)["examples"]
        return [json.loads(line) for line in f if line.strip()]


# What `load` serves while a tune split is scored (see `serving`); None: the datasets as published.
_SERVING: Optional[dict] = None


def serve_key(dataset: str, subset: Optional[str] = None) -> str:
    """The key of one dataset (BBH: one subtask) in a serving spec, e.g. `gsm8k`, `bbh/navigate`."""
    return f"{dataset}/{subset}" if subset else dataset


@contextmanager
def serving(spec: Optional[dict]):
    """While inside, `load` returns, as each task's test split, exactly the rows `spec` names.

    `spec` maps serve_key -> {"rows": [item id, ...], "hold_out": [item id, ...]}; an item id
    is `<split>:<row>` of the published files (e.g. `train:17`). The served rows carry their
    id as `mkr_id`, which the worker records as the item's id. `hold_out` rows are removed
    from the training split, which is the 5-shot GSM8K prompt's pool of examples, so a dev
    item never shows up among the examples of a prompt. This is how `tune` scores its dev
    and test splits with the task configs unchanged.
    """
    global _SERVING
    previous, _SERVING = _SERVING, spec
    try:
        yield
    finally:
        _SERVING = previous


def parse_item_id(item: str):
    split, _, row = str(item).rpartition(":")
    return split, int(row)


def _serve(ds, entry: Optional[dict], key: str):
    import datasets

    if entry is None:
        raise BenchError(f"dataset {key} is not part of the split being scored")
    rows = []
    for item in entry["rows"]:
        split, row = parse_item_id(item)
        rows.append({**ds[split][row], "mkr_id": item})
    served = {"test": datasets.Dataset.from_list(rows)}
    if "train" in ds:
        held = {parse_item_id(i)[1] for i in entry.get("hold_out", []) if parse_item_id(i)[0] == "train"}
        served["train"] = ds["train"].select([i for i in range(len(ds["train"])) if i not in held])
    return datasets.DatasetDict(served)


def splits_of(dataset: str, data_dir: Optional[str] = None, subset: Optional[str] = None) -> Dict[str, int]:
    """Every split the source holds, with its number of rows (tune draws dev and test from these).

    Locally the files present: gsm8k train and test; sciq test, validation and train
    (whichever exist); bbh and humaneval one file each, their test split.
    """
    ds = _load_published(dataset, data_dir, subset, all_splits=True)
    return {split: len(rows) for split, rows in ds.items()}


def load(dataset: str, data_dir: Optional[str] = None, subset: Optional[str] = None):
    """A DatasetDict for `dataset` from `data_dir` if given, else from the hub (or, inside
    `serving`, the rows it names)."""
    if _SERVING is not None:
        return _serve(
            _load_published(dataset, data_dir, subset, all_splits=True),
            _SERVING.get(serve_key(dataset, subset)),
            serve_key(dataset, subset),
        )
    return _load_published(dataset, data_dir, subset)


def _load_published(dataset: str, data_dir: Optional[str], subset: Optional[str], all_splits: bool = False):
    import datasets

    if data_dir and all_splits and dataset == "sciq":  # every local SciQ file, under its own split name
        root = Path(data_dir) / "sciq"
        files = {split: root / f"{split}.jsonl" for split in ("train", "validation", "test")}
        files = {split: path for split, path in files.items() if path.is_file()}
        if files:
            return datasets.DatasetDict(
                {split: datasets.Dataset.from_list(read_rows(path)) for split, path in files.items()}
            )
    if data_dir:
        files = local_files(dataset, Path(data_dir), subset)
        return datasets.DatasetDict(
            {split: datasets.Dataset.from_list(read_rows(path)) for split, path in files.items()}
        )
    path, name = HUB[dataset]
    try:
        return datasets.load_dataset(path, subset or name)
    except Exception as exc:  # network, auth or missing-config failures all land here
        raise BenchError(
            f"cannot load dataset {path}{'/' + (subset or name) if subset or name else ''} from the hub "
            f"({type(exc).__name__}: {exc}); use --data-dir for local copies"
        ) from exc


def source(dataset: str, data_dir: Optional[str], subset: Optional[str] = None) -> dict:
    """Where a dataset is read from, for the results file."""
    if data_dir:
        return {k: str(v) for k, v in local_files(dataset, Path(data_dir), subset).items()}
    path, name = HUB[dataset]
    return {"hub": path, "config": subset or name}
