"""What a reasoning vector looks like: where it is large, how big next to the
target's weights, how sparse, and how it lines up with another vector.

Statistics stream over the shards one tensor at a time in float64, so inspecting
a 7B vector needs the memory of one tensor, not of the model.
"""

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import load_tensor, tensor_files
from mergekit_reasoning.core.reductions import dot64
from mergekit_reasoning.method.vector_format import read_manifest
from mergekit_reasoning.vectors.files import dense_tensors

LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def group_of(name: str) -> Tuple[str, str]:
    """(layer label, module label) of a tensor name: ("3", "mlp.up_proj") or ("embed", "embed_tokens")."""
    match = LAYER.match(name)
    if match:
        return match.group(1), match.group(2)
    short = name.removeprefix("model.").removesuffix(".weight")
    return short, short


def tensors(folder: Path) -> Iterator[Tuple[str, torch.Tensor]]:
    """Dense tensors of a vector folder, sparse storage included."""
    if not any(Path(folder).glob("*.safetensors")):
        raise RecipeError(f"{folder}: no safetensors shards")
    try:
        yield from dense_tensors(folder, read_manifest(folder) or {})
    except RecipeError:
        raise
    except Exception as error:
        raise RecipeError(f"{folder}: cannot read: {error}") from None


def vector_stats(vector: Path, target: Optional[Path] = None, other: Optional[Path] = None) -> Dict:
    """Norms per layer and per module, sizes relative to `target`, cosine with `other`."""
    target_tensors = _lazy(target)
    other_tensors = _lazy(other)
    per_layer: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    per_module: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: Dict[str, float] = defaultdict(float)
    for name, v in tensors(vector):
        entry = {"sq": dot64(v, v), "n": v.numel(), "zeros": int((v == 0).sum())}
        if target_tensors is not None:
            t = target_tensors(name)
            if t is not None:
                rows = min(t.shape[0], v.shape[0]) if t.shape != v.shape else None
                t = t[:rows] if rows else t
                entry["target_sq"] = dot64(t, t)
        if other_tensors is not None:
            o = other_tensors(name)
            if o is None or o.shape != v.shape:
                raise RecipeError(f"vector {other}: tensor {name} is missing or shaped differently")
            entry["dot"] = dot64(v, o)
            entry["other_sq"] = dot64(o, o)
        layer, module = group_of(name)
        buckets = [per_layer[layer], totals]
        if layer.isdigit():
            buckets.append(per_module[module.split(".")[-1]])
        for bucket in buckets:
            for key, amount in entry.items():
                bucket[key] += amount
    return {
        "layers": {k: _summary(v) for k, v in per_layer.items()},
        "modules": {k: _summary(v) for k, v in per_module.items()},
        "total": _summary(totals),
    }


def _lazy(folder: Optional[Path]):
    """A reader of one tensor at a time from a model folder (None if no folder)."""
    if folder is None:
        return None
    where = tensor_files(folder)

    def read(name: str) -> Optional[torch.Tensor]:
        if name not in where and name == "lm_head.weight":
            name = "model.embed_tokens.weight"  # a tied model's head
        if name not in where:
            return None
        return load_tensor(where[name], name)

    return read


def _summary(acc: Dict[str, float]) -> Dict[str, float]:
    out = {"norm": math.sqrt(acc["sq"]), "sparsity": acc["zeros"] / acc["n"] if acc["n"] else 0.0}
    if "target_sq" in acc and acc["target_sq"]:
        out["relative_to_target"] = math.sqrt(acc["sq"] / acc["target_sq"])
    if "dot" in acc:
        denominator = math.sqrt(acc["sq"] * acc["other_sq"])
        out["cosine"] = acc["dot"] / denominator if denominator else 0.0
    return out


def _layer_order(label: str):
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def format_table(stats: Dict) -> str:
    columns = [c for c in ("norm", "relative_to_target", "cosine", "sparsity") if c in stats["total"]]
    header = "| group | " + " | ".join(columns) + " |\n|" + " --- |" * (len(columns) + 1)
    lines = [header]
    for section, key in (("layers", _layer_order), ("modules", str)):
        for label in sorted(stats[section], key=key):
            row = stats[section][label]
            name = f"layer {label}" if label.isdigit() else (f"all layers: {label}" if section == "modules" else label)
            lines.append(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.4g}" for c in columns) + " |")
    total = stats["total"]
    lines.append("| **total** | " + " | ".join(f"{total.get(c, float('nan')):.4g}" for c in columns) + " |")
    return "\n".join(lines)


def plot(stats: Dict, path: Path) -> Path:
    """Write the per-layer figures as a PNG; returns the file written (`.png` is added to a
    name without a suffix, as matplotlib does)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RecipeError("plotting needs matplotlib: pip install '.[plot]' in a clone of mergekit-reasoning") from None
    layers = sorted((k for k in stats["layers"] if k.isdigit()), key=int)
    metrics = [m for m in ("norm", "relative_to_target", "cosine") if m in stats["total"]]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        ax.bar([int(k) for k in layers], [stats["layers"][k][metric] for k in layers])
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_xticks([int(k) for k in layers])
    axes[-1, 0].set_xlabel("layer")
    fig.suptitle("reasoning vector by layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
