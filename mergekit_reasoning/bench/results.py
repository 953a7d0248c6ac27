"""Turn lm-eval's result dicts into flat score records, and cache them per scoring unit.

A unit is one (model, condition, task, variant). Its records (and samples, when asked)
are stored under `out_dir/cache/<key>.json`, where the key hashes everything that
decides the score; a rerun or an interrupted λ sweep reuses every finished unit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

_NOT_METRICS = {"alias", "name", "sample_len", "sample_count", " ", "samples"}


def unit_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_unit(cache_dir: Path, key: str) -> Optional[dict]:
    path = cache_dir / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # a torn write from an interrupted run: redo it
        return None


def save_unit(cache_dir: Path, key: str, unit: dict) -> dict:
    """Write atomically, so an interruption never leaves a half unit that looks finished.

    Returns the unit as stored (plain JSON types), which is what a later run loads.
    """
    plain = jsonable(unit)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(plain))
    os.replace(tmp, cache_dir / f"{key}.json")
    return plain


def jsonable(value: Any) -> Any:
    """Plain JSON types: lm-eval's own conversion for what `json` cannot write (numpy
    scalars, sets), and None for NaN and infinities, which strict JSON lacks."""
    from lm_eval.utils import handle_non_serializable

    text = json.dumps(value, default=handle_non_serializable, allow_nan=True)
    return json.loads(text, parse_constant=lambda constant: None)


def _metrics(entry: dict) -> List[dict]:
    out = []
    for key, value in entry.items():
        if key in _NOT_METRICS or "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        stderr = entry.get(f"{metric}_stderr,{filt}")
        out.append(
            {
                "metric": metric,
                "filter": filt,
                "value": jsonable(value),
                "stderr": jsonable(stderr) if isinstance(stderr, (int, float)) or hasattr(stderr, "item") else None,
            }
        )
    return out


def records_for(res: dict, lm_name: str) -> List[dict]:
    """Score records for one lm-eval task or group (a group also yields its subtasks)."""
    results, nsamp = res["results"], res.get("n-samples", {})
    subtasks = res.get("group_subtasks", {}).get(lm_name, [])
    out = []
    for name in [lm_name, *subtasks]:
        if name not in results:
            continue
        n = nsamp.get(name, {}).get("effective")
        if n is None and name == lm_name and subtasks:
            n = sum(nsamp.get(s, {}).get("effective", 0) for s in subtasks)
        sub = None if name == lm_name else name.rsplit("_fewshot_", 1)[-1]
        for m in _metrics(results[name]):
            out.append({"subtask": sub, "n": n, **m})
    return out


def _number(value: Any) -> Optional[float]:
    """A per-item metric value as a float (bools included); None for anything else (e.g. a
    corpus-level metric's raw pair), which has no per-item outcome to compare."""
    if isinstance(value, (bool, int, float)) or hasattr(value, "item"):
        number = float(value)
        return number if number == number else None  # NaN: no outcome
    return None


def item_id(row: dict) -> Any:
    """An item's id: the dataset row's own `mkr_id` where the loader set one (tune's dev
    and test splits name their source rows), else lm-eval's document index."""
    doc = row.get("doc")
    return doc["mkr_id"] if isinstance(doc, dict) and "mkr_id" in doc else row["doc_id"]


def items_for(res: dict, lm_name: str) -> Dict[str, dict]:
    """Per-item outcomes of one task or group, compact: for each lm-eval task (a group's
    subtasks), the item ids, a digest of the documents, and per `metric,filter` the values
    in id order. This is what paired statistics need, so a comparison never rescores."""
    names = [lm_name, *res.get("group_subtasks", {}).get(lm_name, [])]
    out = {}
    for name in names:
        rows = res.get("samples", {}).get(name)
        if not rows:
            continue
        values: Dict[str, Dict[Any, float]] = {}
        hashes: Dict[Any, str] = {}
        for row in rows:
            ident = item_id(row)
            hashes.setdefault(ident, str(row.get("doc_hash", "")))
            for metric in row.get("metrics", []):
                number = _number(row.get(metric))
                if number is not None:
                    values.setdefault(f"{metric},{row.get('filter')}", {})[ident] = number
        ids = sorted(hashes, key=lambda i: (str(type(i)), i))
        digest = hashlib.sha256("\n".join(f"{i}:{hashes[i]}" for i in ids).encode()).hexdigest()
        out[name] = {
            "ids": ids,
            "docs_sha256": digest,
            "values": {key: [_compact(per_id.get(i)) for i in ids] for key, per_id in values.items()},
        }
    return jsonable(out)


def _compact(value: Optional[float]):
    """1 for 1.0: most outcomes are 0/1, and the results file holds thousands of them."""
    return int(value) if value is not None and value.is_integer() else value


def item_values(entry: dict, metric_filter: str) -> Dict[Any, float]:
    """item id -> value of one `metric,filter` from an `items_for` entry (items without one left out)."""
    ids, values = entry["ids"], entry["values"].get(metric_filter)
    if values is None:
        return {}
    return {_hashable(i): float(v) for i, v in zip(ids, values) if v is not None}


def _hashable(ident):
    return tuple(ident) if isinstance(ident, list) else ident


def samples_for(res: dict, lm_name: str) -> Dict[str, list]:
    """Per-sample outputs, compacted: document id, target, raw and filtered responses, scores."""
    names = [lm_name, *res.get("group_subtasks", {}).get(lm_name, [])]
    out = {}
    for name in names:
        rows = res.get("samples", {}).get(name)
        if rows is None:
            continue
        keep = ("doc_id", "target", "resps", "filtered_resps", "filter", "metrics")
        out[name] = [
            {**{k: row.get(k) for k in keep}, "scores": {m: row.get(m) for m in row.get("metrics", [])}} for row in rows
        ]
    return jsonable(out)
