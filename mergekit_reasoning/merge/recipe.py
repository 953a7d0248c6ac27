"""Reading and checking a `reasoning_vector` recipe before anything is merged.

The stock `mergekit-yaml` discovers problems tensor by tensor; the project's own
commands check the whole recipe first: YAML, roles, pairing and compatibility
of every model, each problem reported in one line that names the culprit.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from mergekit_reasoning.errors import RecipeError

METHOD = "reasoning_vector"


@dataclass
class CheckedRecipe:
    """A recipe that passed every check, with what the checks found."""

    text: str
    config: Any  # mergekit.config.MergeConfiguration
    pairs: List[Any]  # roles.VectorPair[ModelReference]
    compatibility: Any  # compat.Compatibility


def load_recipe(path: Path) -> Tuple[str, Any]:
    """Parse a recipe file with mergekit's own configuration schema."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RecipeError(f"recipe {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path}: not valid YAML: {str(error).splitlines()[0]}") from None
    return text, parse_recipe(data, source=str(path))


def parse_recipe(data: Any, *, source: str = "recipe") -> Any:
    from mergekit.config import MergeConfiguration

    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping of recipe keys")
    try:
        config = MergeConfiguration.model_validate(data)
    except Exception as error:
        first = str(error).strip().splitlines()
        raise RecipeError(f"{source}: {' '.join(first[:3])}") from None
    if config.merge_method != METHOD:
        raise RecipeError(f"{source}: merge_method is {config.merge_method!r}, expected {METHOD!r}")
    if config.base_model is None:
        raise RecipeError(f"{source}: base_model (the target) is missing")
    return config


def check_recipe(text: str, config: Any) -> CheckedRecipe:
    """Pair the donors by role and check every model against the target."""
    from mergekit_reasoning.merge.compat import check_compatible
    from mergekit_reasoning.merge.inputs import check_roles, model_info
    from mergekit_reasoning.merge.roles import DEFAULT_VECTOR, pair_donors

    donors, roles, vectors, lambdas = [], {}, {}, {}
    for entry in _donor_entries(config):
        ref = entry.model
        if ref == config.base_model:
            continue
        if ref in roles:
            raise RecipeError(f"model {ref} is listed twice")
        params: Dict[str, Any] = dict(entry.parameters or {})
        donors.append(ref)
        roles[ref] = _scalar(params.get("role"), ref, "role")
        vectors[ref] = _scalar(params.get("vector", DEFAULT_VECTOR), ref, "vector")
        lam = params.get("lambda", (config.parameters or {}).get("lambda", 1.0))
        if isinstance(lam, (int, float)) and not isinstance(lam, bool):
            lambdas[ref] = float(lam)
        # filters and gradients are resolved per tensor by the method itself
    if not donors:
        raise RecipeError("recipe has no donor models: add a `role: grpo` and a `role: sft` model")
    pairs = pair_donors(donors, roles, vectors, lambdas)
    check_roles(roles.items(), config.dtype)
    target = model_info(config.base_model)
    compatibility = check_compatible(target, [model_info(ref) for ref in donors])
    return CheckedRecipe(text=text, config=config, pairs=pairs, compatibility=compatibility)


def _donor_entries(config: Any):
    if config.models:
        return list(config.models)
    entries = []
    for output_slice in config.slices or []:
        entries.extend(output_slice.sources)
    for module in (config.modules or {}).values():
        entries.extend(module.models or [])
        for output_slice in module.slices or []:
            entries.extend(output_slice.sources)
    seen, unique = set(), []
    for entry in entries:
        if entry.model not in seen:
            seen.add(entry.model)
            unique.append(entry)
    return unique


def _scalar(value: Any, ref: Any, name: str) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise RecipeError(f"model {ref}: {name} must be a single value, not {type(value).__name__}")


def retarget(data: dict, target: str, by_role: Dict[str, str]) -> dict:
    """A copy of recipe `data` with its target and each donor replaced by role.

    This is how the demo and the tests run the shipped recipes on stand-ins.
    """
    out = dict(data, base_model=target)
    out["models"] = [
        dict(entry, model=by_role[(entry.get("parameters") or {})["role"]]) for entry in data["models"]
    ]
    return out
