"""Benchmark data: the Hugging Face hub by default, local copies under `--data-dir`.

The local layout is that of the project's offline copies (`../shared/data`):
gsm8k/{train,test}.jsonl, bbh/<subtask>.json, humaneval/HumanEval.jsonl.gz and
sciq/{test or validation}.jsonl. Each loader returns a `datasets.DatasetDict`
whose split names match the task YAMLs, so lm-eval never knows the source.
"""

from __future__ import annotations

import gzip
import json
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


def load(dataset: str, data_dir: Optional[str] = None, subset: Optional[str] = None):
    """A DatasetDict for `dataset` from `data_dir` if given, else from the hub."""
    import datasets

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
