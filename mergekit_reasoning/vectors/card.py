"""The model card (`README.md`) a vector folder is shared with.

`extract` and `densify` write it beside `reasoning_vector.json`, built from that
manifest alone: YAML metadata the Hugging Face hub reads, then what the vector is,
the recipe and commands that apply it, its sparsity, norms and shard hashes.

Metadata:
- `base_model`: the donors' hub ids (revision dropped: the field takes ids only; the
  body gives the revisions). Donors that are local folders have no hub id and are left
  out, and so is the field when neither has one.
- `library_name: mergekit`. The hub reads the field as free text and links the keys of
  its list of model libraries (huggingface.js, `model-libraries.ts`) to code snippets;
  mergekit is not among them, so the card gets no snippet, which is right: no library
  loads a vector as a model, mergekit applies it. `transformers` would offer a snippet
  that loads a weight difference as if it were a model, and `safetensors` is a file
  format the hub detects from the files by itself, not a library key.
- `tags`: `mergekit`, `reasoning-vector`, `task-arithmetic`.
- `license`: the donors' license where their `config.json` or model card states it and
  they agree; `other` when they state different ones; `unknown` when either is silent.

The card is not covered by the manifest's hashes (they cover the shards), so it can be
edited before uploading without `verify` failing.
"""

import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional

CARD = "README.md"
LIBRARY = "mergekit"
TAGS = ["mergekit", "reasoning-vector", "task-arithmetic"]
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def hub_id(model: str) -> Optional[str]:
    """`org/name` for a hub model reference (`org/name`, `org/name@rev`, or a folder of the
    Hugging Face cache, `.../models--org--name/snapshots/<commit>`); None for a local folder."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(model)
    if len(path.parts) >= 3 and path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        candidate = path.parent.parent.name[len("models--") :].replace("--", "/", 1)
    elif model.startswith((".", "/", "~")) or path.exists():
        return None
    else:
        candidate = model.split("@", 1)[0]
    if candidate.count("/") != 1:
        return None
    try:
        validate_repo_id(candidate)
    except HFValidationError:
        return None
    return candidate


def donor_license(folder: Path, model: str, revision: Optional[str]) -> Optional[str]:
    """The license a donor states: `license` in its config.json, else in its model card's
    metadata (the card in its folder, else the hub's, when the hub can be reached)."""
    folder = Path(folder)
    try:
        stated = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("license")
    except (OSError, ValueError, AttributeError):
        stated = None
    if stated:
        return str(stated)
    card = folder / CARD
    if not card.is_file() and hub_id(model):
        try:
            from huggingface_hub import hf_hub_download

            card = Path(hf_hub_download(hub_id(model), CARD, revision=revision))
        except Exception:  # offline, no card, private: the license stays unknown
            return None
    return _card_license(card)


def _card_license(path: Path) -> Optional[str]:
    from huggingface_hub import ModelCard

    try:
        value = ModelCard.load(path).data.to_dict().get("license")
    except Exception:  # no card, or metadata the hub itself would not read
        return None
    return str(value) if value else None


def combined_license(licenses: List[Optional[str]]) -> str:
    """One license for the vector: the donors' when they agree, `other` when they differ, else `unknown`."""
    if not licenses or any(not lic for lic in licenses):
        return "unknown"
    return licenses[0] if len(set(licenses)) == 1 else "other"


def card_metadata(manifest: Dict):
    from huggingface_hub import ModelCardData

    sources = manifest["sources"]
    donors = [hub_id(sources[role]["model"]) for role in ("grpo", "sft")]
    return ModelCardData(
        base_model=[d for d in dict.fromkeys(donors) if d] or None,
        library_name=LIBRARY,
        license=combined_license([sources[role].get("license") for role in ("grpo", "sft")]),
        tags=list(TAGS),
    )


def extract_command(manifest: Dict, folder_name: str) -> str:
    """The `mergekit-reasoning extract` command line that writes this folder."""
    sources, sparsify = manifest["sources"], manifest.get("sparsify")
    words = [
        "mergekit-reasoning",
        "extract",
        "--grpo",
        _pinned(sources["grpo"]),
        "--sft",
        _pinned(sources["sft"]),
        folder_name,
        "--dtype",
        manifest["dtype"],
    ]
    if sparsify:
        words += ["--sparsify", sparsify["method"], "--density", f"{sparsify['density']:g}"]
        if sparsify["method"] == "dare":
            words += ["--seed", str(sparsify["seed"])]
    if manifest.get("storage") == "sparse":
        words += ["--storage", "sparse"]
    return " ".join(words)


def _pinned(source: Dict) -> str:
    model, revision = source["model"], source.get("revision")
    if hub_id(model) and "@" not in model and revision and not Path(model).exists():
        return f"{model}@{revision}"
    return model


def apply_recipe(manifest: Dict, folder_name: str) -> str:
    """A recipe that adds this vector to a target (the dense folder, for a sparse one)."""
    vector = folder_name + ("-dense" if manifest.get("storage") == "sparse" else "")
    return (
        "\n".join(
            [
                "merge_method: reasoning_vector",
                "base_model: TARGET          # the model to add the vector to: the donors' architecture and shapes",
                "models:",
                f"  - model: ./{vector}"
                + " " * max(1, 16 - len(vector))
                + "# this folder, or its hub id once uploaded",
                "    parameters:",
                "      role: vector",
                "parameters:",
                "  lambda: 1.0                # λ; a negative λ subtracts the vector",
                "out_dtype: bfloat16          # no `dtype`: the vector is used as stored",
            ]
        )
        + "\n"
    )


def _groups(tensors: Dict[str, Dict]) -> List[tuple]:
    """(group, tensors, norm, nonzero fraction) per layer, and per tensor outside the layers."""
    groups: Dict[str, List[Dict]] = {}
    for name, entry in tensors.items():
        match = _LAYER.match(name)
        groups.setdefault(f"layer {match.group(1)}" if match else name, []).append(entry)
    rows = []
    for group, entries in groups.items():
        size = sum(math.prod(e["shape"]) for e in entries)
        norm = math.sqrt(sum(e["norm"] ** 2 for e in entries))
        nonzero = sum(e["density"] * math.prod(e["shape"]) for e in entries) / max(size, 1)
        rows.append((group, len(entries), norm, nonzero))
    return rows


def card_text(manifest: Dict, folder_name: str, *, densified_from: Optional[str] = None) -> str:
    """The whole README.md: metadata header, then the body."""
    sources, tensors = manifest["sources"], manifest["tensors"]
    sparsify, storage = manifest.get("sparsify"), manifest.get("storage", "dense")
    grpo, sft = sources["grpo"]["model"], sources["sft"]["model"]
    size = sum(math.prod(e["shape"]) for e in tensors.values())
    nonzero = sum(e["density"] * math.prod(e["shape"]) for e in tensors.values()) / max(size, 1)
    full_norm = math.sqrt(sum(e["full_norm"] ** 2 for e in tensors.values()))
    arch = manifest.get("architecture") or {}
    version = (manifest.get("packages") or {}).get("mergekit-reasoning") or "?"
    meta = card_metadata(manifest)
    local = [sources[r]["model"] for r in ("grpo", "sft") if not hub_id(sources[r]["model"])]
    lines = [
        "---",
        meta.to_yaml(),
        "---",
        "",
        f"# Reasoning vector: {grpo} − {sft}",
        "",
        "A reasoning vector (Zbeeb, Hammoud, Ghanem, [arXiv:2509.01363](https://arxiv.org/abs/2509.01363)) "
        "is the weight difference v = θ_GRPO − θ_SFT between two models fine-tuned from one initialisation on "
        "the same data, one with GRPO and one with SFT: what the reinforcement learning added. Added to a "
        "compatible model, θ_target + λ·v transfers it; subtracting it (λ < 0) is the ablation. It is not a "
        "model to run by itself.",
        "",
        "| role | model | revision | license |",
        "|---|---|---|---|",
    ]
    for role, label in (("grpo", "GRPO"), ("sft", "SFT")):
        source = sources[role]
        lines.append(
            f"| {label} | `{source['model']}` | {source.get('revision') or 'not recorded'} "
            f"| {source.get('license') or 'not stated'} |"
        )
    if local:
        what = "is a local folder" if len(local) == 1 else "are local folders"
        lines += ["", f"`base_model` lists only donors with a hub id; {', '.join(f'`{m}`' for m in local)} {what}."]
    lines += ["", f"Written by mergekit-reasoning {version}:", "", "```bash"]
    if densified_from is None:
        lines += [extract_command(manifest, folder_name)]
    else:  # extracted sparse, then made dense again
        lines += [
            extract_command(dict(manifest, storage="sparse"), densified_from),
            f"mergekit-reasoning densify {densified_from} {folder_name}",
        ]
    lines += ["```", "", "## Apply it", ""]
    if storage == "sparse":
        lines += [
            "This folder keeps only the nonzero entries, for sharing. Recipes apply the dense folder; "
            "rebuild it first (bit for bit the dense extraction):",
            "",
            "```bash",
            f"mergekit-reasoning densify {folder_name} {folder_name}-dense",
            "```",
            "",
        ]
    lines += [
        "Save as `apply.yml`, with TARGET the model to add the vector to (a model with the donors' "
        "architecture and tensor shapes):",
        "",
        "```yaml",
        apply_recipe(manifest, folder_name).rstrip("\n"),
        "```",
        "",
        "```bash",
        'pip install "mergekit-reasoning @ git+https://github.com/<org>/mergekit-reasoning"',
        "mergekit-reasoning check apply.yml          # configs and headers only, in seconds",
        "mergekit-yaml apply.yml OUT                 # stock mergekit, or: mergekit-reasoning merge apply.yml OUT",
        "```",
        "",
        "## Contents",
        "",
        f"- {len(tensors)} tensors, {manifest['dtype']}, stored {storage}; architecture "
        f"{', '.join(arch.get('architectures') or ['?'])}, hidden size {arch.get('hidden_size', '?')}, "
        f"{arch.get('num_hidden_layers', '?')} layers.",
        "- Sparsity: "
        + (
            "none, every entry kept"
            if not sparsify
            else f"{sparsify['method']} at density {sparsify['density']:g}"
            + (f", seed {sparsify['seed']}" if sparsify["method"] == "dare" else "")
        )
        + f"; {nonzero:.2%} of the {size:,} entries are nonzero.",
        f"- Norm ‖v‖ = {manifest['total_norm']:.6g} (the full vector's: {full_norm:.6g}); distance from the full "
        f"vector, relative: {manifest['relative_error']:.3%}.",
        "",
        "| part | tensors | norm | nonzero |",
        "|---|---|---|---|",
    ]
    lines += [f"| {group} | {count} | {norm:.6g} | {frac:.2%} |" for group, count, norm, frac in _groups(tensors)]
    lines += [
        "",
        "## Files",
        "",
        "SHA-256 of each shard as `reasoning_vector.json` records it; `mergekit-reasoning verify FOLDER` checks "
        "them. This README is not covered, so it can be edited.",
        "",
        "| file | SHA-256 |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in sorted(manifest["shards"].items())]
    return "\n".join(lines) + "\n"


def write_card(
    folder: Path, manifest: Dict, *, name: Optional[str] = None, densified_from: Optional[str] = None
) -> Path:
    """Write README.md into `folder` (a staging folder: `name` is the folder's final name)."""
    path = Path(folder) / CARD
    path.write_text(card_text(manifest, name or Path(folder).name, densified_from=densified_from), encoding="utf-8")
    return path
