"""A `reasoning_vector` recipe in its one form, from file to checked plan input.

`Recipe` is the text a user wrote, where it came from and its YAML mapping,
parsed once. Code that must run before mergekit is imported (read-ahead, the
output reservation) reads the mapping through `Recipe.peek`, which never
raises; everything else validates it with mergekit's own schema
(`Recipe.config`) and checks roles, pairing and every model's compatibility
(`Recipe.check`), each problem in one line that names the culprit. The stock
`mergekit-yaml` discovers problems tensor by tensor; the project's commands
check the whole recipe first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.method.roles import lambda_problem

METHOD = "reasoning_vector"
# Bounds a recipe must keep before any validation runs: YAML aliases can make a few
# bytes stand for billions of values, and nesting can exhaust the validator's stack.
MAX_BYTES = 1 << 20
MAX_VALUES = 100_000  # after expanding aliases
MAX_DEPTH = 32
LARGE_LAMBDA = 100.0  # beyond this |λ| a note says the merge is likely not what was meant


@dataclass
class CheckedRecipe:
    """A recipe that passed every check, with what the checks found."""

    text: str
    config: Any  # mergekit.config.MergeConfiguration
    pairs: List[Any]  # roles.VectorPair[ModelReference]
    compatibility: Any  # compat.Compatibility
    lambda_notes: List[str] = field(default_factory=list)

    def notes(self) -> List[str]:
        """What a user should know before merging: policies applied, unusual λ."""
        return self.compatibility.notes() + self.lambda_notes


@dataclass
class Recipe:
    """A recipe's text, its source (a path or a label) and its YAML mapping."""

    text: str
    source: str
    data: Dict[str, Any]
    _checked: Optional[CheckedRecipe] = field(default=None, repr=False, compare=False)

    @classmethod
    def read(cls, path: Union[str, Path]) -> "Recipe":
        """Read a recipe file; a missing, non-UTF-8 or non-YAML file is one RecipeError."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise RecipeError(f"recipe {path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise RecipeError(f"recipe {path}: not a UTF-8 text file") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, *, source: str = "recipe") -> "Recipe":
        if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            raise RecipeError(f"recipe {source}: larger than {MAX_BYTES >> 20} MiB; a recipe is a few lines of YAML")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise RecipeError(f"recipe {source}: not valid YAML: {str(error).splitlines()[0]}") from None
        except RecursionError:
            raise RecipeError(f"recipe {source}: nested deeper than {MAX_DEPTH} levels") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: expected a mapping of recipe keys")
        _check_bounds(data, source)
        return cls(text=text, source=source, data=data)

    @classmethod
    def from_data(cls, data: Dict[str, Any], *, source: str = "recipe") -> "Recipe":
        """A recipe written from a mapping (its text is that mapping as YAML)."""
        return cls.from_text(yaml.safe_dump(data, sort_keys=False), source=source)

    @classmethod
    def for_pair(cls, target: str, grpo: str, sft: str, lam: float = 1.0, dtype: str = "bfloat16") -> "Recipe":
        """The plain recipe target + lam·(grpo − sft), loaded and written in `dtype`."""
        return cls.from_data(
            {
                "merge_method": METHOD,
                "base_model": str(target),
                "models": [
                    {"model": str(grpo), "parameters": {"role": "grpo"}},
                    {"model": str(sft), "parameters": {"role": "sft"}},
                ],
                "parameters": {"lambda": float(lam)},
                "dtype": dtype,
                "out_dtype": dtype,
            },
            source="λ sweep",
        )

    @classmethod
    def peek(cls, path: Union[str, Path]) -> Optional["Recipe"]:
        """The recipe at `path`, or None when it is unreadable: for code that runs before
        the recipe is checked (which then reports the problem properly)."""
        try:
            return cls.read(path)
        except RecipeError:
            return None

    def model_refs(self) -> List[str]:
        """The target and every donor (under `models:` and `slices:`), as written (no mergekit)."""
        refs = [self.data.get("base_model")] + [entry.get("model") for entry in _input_entries(self.data)]
        return list(dict.fromkeys(r for r in refs if isinstance(r, str)))

    def config(self) -> Any:
        """The recipe as mergekit's MergeConfiguration; RecipeError unless it is a
        `reasoning_vector` recipe with a target."""
        from mergekit.config import MergeConfiguration

        try:
            config = MergeConfiguration.model_validate(self.data)
        except Exception as error:
            first = str(error).strip().splitlines()
            raise RecipeError(f"{self.source}: {' '.join(first[:3])}") from None
        if config.merge_method != METHOD:
            raise RecipeError(f"{self.source}: merge_method is {config.merge_method!r}, expected {METHOD!r}")
        if config.base_model is None:
            raise RecipeError(f"{self.source}: base_model (the target) is missing")
        return config

    def check(self) -> CheckedRecipe:
        """Pair the donors by role and check every model against the target (once)."""
        if self._checked is None:
            notes = [note for where, value in _lambda_settings(self.data) for note in _check_lambda(value, where)]
            config = self.config()
            self._checked = _check(self.text, config)
            self._checked.lambda_notes = notes
        return self._checked


def model_dir(ref: str) -> str:
    """The folder of a model reference, without its `@revision`."""
    return str(ref).split("@")[0]


def _check(text: str, config: Any) -> CheckedRecipe:
    from mergekit_reasoning.method.compat import check_compatible
    from mergekit_reasoning.method.models import check_roles, model_info
    from mergekit_reasoning.method.roles import DEFAULT_VECTOR, pair_donors, recipe_entries, target_as_donor

    donors, roles, vectors, lambdas = [], {}, {}, {}
    for entry in recipe_entries(config):
        ref = entry.model
        if ref == config.base_model:
            target_role = _scalar((entry.parameters or {}).get("role"), ref, "role")
            if target_role is not None:
                raise RecipeError(target_as_donor(ref, target_role))
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
    layers = _slice_layers(config, model_info)
    compatibility = check_compatible(target, [model_info(ref) for ref in donors], layers=layers)
    return CheckedRecipe(text=text, config=config, pairs=pairs, compatibility=compatibility)


def _slice_layers(config: Any, model_info) -> Optional[Dict[str, Dict[int, int]]]:
    """Which layers of each donor meet which of the target's: None for `models:` (every
    layer with the same one, at equal depths), else from the recipe's `slices:`."""
    from mergekit_reasoning.method.compat import DEPTH, slice_layers

    slices = list(config.slices or [])
    for module in (config.modules or {}).values():
        slices.extend(module.slices or [])
    if config.models or not slices:
        return None
    maps: Dict[str, Dict[int, int]] = {}
    for output_slice in slices:
        sources = [(str(s.model), tuple(s.layer_range)) for s in output_slice.sources]
        depths = {str(s.model): model_info(s.model).config.get(DEPTH) for s in output_slice.sources}
        base = output_slice.base_model or config.base_model
        for donor, layers in slice_layers(str(base), sources, depths).items():
            maps.setdefault(donor, {}).update(layers)
    return maps


def _check_bounds(data: Any, source: str) -> None:
    """Refuse recipes whose YAML, aliases expanded, holds too many values or nests too
    deep (or refers to itself), before any validator walks it."""
    budget = [MAX_VALUES]

    def walk(value: Any, depth: int, path: tuple) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise RecipeError(f"recipe {source}: more than {MAX_VALUES} values once its YAML aliases are expanded")
        if depth > MAX_DEPTH:
            raise RecipeError(f"recipe {source}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, (dict, list)):
            if id(value) in path:
                raise RecipeError(f"recipe {source}: a YAML alias refers to itself")
            children = value.values() if isinstance(value, dict) else value
            for child in children:
                walk(child, depth + 1, path + (id(value),))

    walk(data, 0, ())


def _input_entries(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The raw YAML entries of a recipe's inputs: under `models:` and each slice's `sources:`."""
    entries = list(data.get("models") or [])
    for output_slice in data.get("slices") or []:
        if isinstance(output_slice, dict):
            entries.extend(output_slice.get("sources") or [])
    return [entry for entry in entries if isinstance(entry, dict)]


def _lambda_settings(data: Dict[str, Any]):
    """(where, value) of every `lambda` a recipe sets: for the whole recipe, per model, per slice source."""
    entries = [("the recipe", data)] + [(f"model {entry.get('model')}", entry) for entry in _input_entries(data)]
    for where, entry in entries:
        parameters = entry.get("parameters")
        if isinstance(parameters, dict) and "lambda" in parameters:
            yield where, parameters["lambda"]


def _check_lambda(value: Any, where: str) -> List[str]:
    """`lambda` must be a finite number, or a list of them (a gradient), or filtered values;
    returns a note for an |λ| so large the merge is likely not what was meant."""
    numbers = []

    def collect(item: Any) -> None:
        if isinstance(item, dict) and "value" in item:
            collect(item["value"])
        elif isinstance(item, list) and item:
            for part in item:
                collect(part)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            numbers.append(float(item))
        else:
            raise RecipeError(f"{where}: lambda must be a number (or a list of numbers), got {item!r}")

    collect(value)
    for number in numbers:
        problem = lambda_problem(number)
        if problem is not None:
            raise RecipeError(f"{where}: {problem}")
    large = [x for x in numbers if abs(x) > LARGE_LAMBDA]
    return [f"{where}: lambda {large[0]:g} is far outside the usual range (|λ| ≤ {LARGE_LAMBDA:g})"] if large else []


def _scalar(value: Any, ref: Any, name: str) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise RecipeError(f"model {ref}: {name} must be a single value, not {type(value).__name__}")
