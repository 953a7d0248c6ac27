"""The model card of a merge: mergekit's, plus what a reasoning-vector merge did.

mergekit's card (`mergekit.card.generate_card`, which `mergekit-yaml`, `run_merge`
and `mergekit-reasoning merge` all write) names the method, the base model and
a list of the other models, and embeds the recipe; for this method that leaves
out which donor is the GRPO side and which the SFT side, and λ. mergekit offers
no hook for a method to add to its card, so `install` wraps `generate_card`
where mergekit keeps it: for a `reasoning_vector` configuration the card gains a
section stating the target, each vector's GRPO and SFT donors, and λ; every
other method's card is mergekit's, byte for byte.
"""

import functools
import sys
from typing import Any, Dict, List

from mergekit_reasoning.method.roles import DEFAULT_VECTOR, STORED, recipe_entries

NAME = "reasoning_vector"
_WRAPPED = "_mergekit_reasoning_card"
HEADING = "### Reasoning vector"


def reasoning_section(config: Any) -> str:
    """Markdown: the target, each vector's donors by role, and its λ, from the configuration."""
    target = config.base_model
    shared_lambda = (config.parameters or {}).get("lambda", 1.0)
    vectors: Dict[str, Dict[str, Any]] = {}
    for entry in recipe_entries(config):
        if entry.model == target:
            continue
        params = dict(entry.parameters or {})
        role = params.get("role")
        name = params.get("vector", DEFAULT_VECTOR if role != STORED else str(entry.model))
        vector = vectors.setdefault(str(name), {"lambda": params.get("lambda", shared_lambda)})
        vector[str(role)] = entry.model
    lines: List[str] = [
        HEADING,
        "",
        "θ_out = θ_target + λ·(θ_GRPO − θ_SFT)"
        + (", summed over the vectors below:" if len(vectors) > 1 else ", with:"),
        "",
        f"* target: `{target}`",
    ]
    for name, vector in vectors.items():
        of = "" if len(vectors) == 1 and name == DEFAULT_VECTOR else f" of vector `{name}`"
        if STORED in vector:
            lines.append(f"* stored vector{of} (θ_GRPO − θ_SFT, extracted): `{vector[STORED]}`")
        else:
            lines.append(f"* GRPO donor{of}: `{vector.get('grpo')}`")
            lines.append(f"* SFT donor{of}: `{vector.get('sft')}`")
        lines.append(f"* λ{of}: {_lambda_text(vector['lambda'])}")
    return "\n".join(lines) + "\n"


def _lambda_text(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return "set per tensor by the configuration's `lambda` (filters or a per-layer gradient, below)"


def with_reasoning_section(card: str, config: Any) -> str:
    """`card` (mergekit's) with the reasoning-vector section before its list of models."""
    section = reasoning_section(config)
    marker = "### Models Merged"
    if marker in card:
        head, tail = card.split(marker, 1)
        return f"{head}{section}\n{marker}{tail}"
    return f"{card.rstrip()}\n\n{section}"


def _wrap(generate_card):
    if getattr(generate_card, _WRAPPED, False):
        return generate_card

    @functools.wraps(generate_card)
    def wrapped(config, config_yaml, name=None, *args, **kwargs):
        card = generate_card(config, config_yaml, name, *args, **kwargs)
        if getattr(config, "merge_method", None) == NAME:
            card = with_reasoning_section(card, config)
        return card

    setattr(wrapped, _WRAPPED, True)
    return wrapped


def install() -> None:
    """Wrap `generate_card` in mergekit.card, and in mergekit.merge (which imports it by
    name), wherever those modules are loaded; idempotent. The method calls this when
    mergekit plans a merge with it, by which time both are loaded."""
    wrapped = None
    for module_name in ("mergekit.card", "mergekit.merge"):
        module = sys.modules.get(module_name)
        function = getattr(module, "generate_card", None) if module is not None else None
        if function is None:
            continue
        if wrapped is not None and function is getattr(wrapped, "__wrapped__", None):
            module.generate_card = wrapped  # the same function, wrapped once
        else:
            module.generate_card = wrapped = _wrap(function)
