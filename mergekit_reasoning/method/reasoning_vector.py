"""`reasoning_vector`: target + Σ λ·(GRPO − SFT), as a mergekit merge method.

Declared like mergekit's own methods (a spec of parameters and an input
contract) and registered by name on import. The target is the recipe's
`base_model`; each donor says `role: grpo` or `role: sft`, and optionally which
`vector` it belongs to when a recipe adds several. `lambda` is an ordinary
mergekit parameter, so filters and per-layer gradients apply.

`role` defaults to unset, so that mergekit's generic callers, which pass only
generic parameters to every registered method (its own test suite does), get
the arithmetic on in-memory inputs read in order: base, GRPO, SFT. Models never
go by order: a model without a role is refused in one line, by `check` and
`mergekit-reasoning merge` before anything is read, and by stock mergekit while
it plans, before anything is written. `role` is bound for every input,
the target included, so that a target also listed as a donor is named as such.
"""

import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Hashable, Optional, Sequence, Tuple

import click
import torch
from mergekit.common import ModelReference
from mergekit.merge_methods import registry
from mergekit.merge_methods.base import (
    BasePolicy,
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    ParameterScope,
    ParameterSpec,
    TensorGroup,
)

from mergekit_reasoning.core.errors import Error, RecipeError
from mergekit_reasoning.core.staging import refuse_output_over_inputs
from mergekit_reasoning.method import merge_card
from mergekit_reasoning.method.compat import (
    COMMON,
    DEPTH,
    LayerMaps,
    check_compatible,
    check_raw_compatible,
    slice_layers,
)
from mergekit_reasoning.method.kernel import merge_tensor
from mergekit_reasoning.method.models import (
    check_roles,
    model_identity,
    model_info,
    refuse_non_float_inputs,
    single_file,
)
from mergekit_reasoning.method.roles import DEFAULT_VECTOR, Role, pair_donors, roles_in_order, target_as_donor

NAME = "reasoning_vector"


class ReasoningVectorMerge(GroupMergeMethod):
    spec = MergeMethodSpec(
        name=NAME,
        pretty_name="Reasoning vector (target + λ·(GRPO − SFT))",
        reference_url="https://arxiv.org/abs/2509.01363",
        parameters=(
            ParameterSpec("role", Optional[Role], ParameterScope.INPUT, default=None),
            ParameterSpec("vector", str, ParameterScope.NON_BASE, default=DEFAULT_VECTOR),
            ParameterSpec("lambda", float, ParameterScope.NON_BASE, default=1.0),
        ),
        contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
    )

    def validate_inputs(
        self,
        input_ids: Sequence[Hashable],
        base_id: Optional[Hashable] = None,
        *,
        group_name: Optional[str] = None,
    ) -> None:
        super().validate_inputs(input_ids, base_id, group_name=group_name)
        merge_card.install()  # mergekit writes the card after the merge this plans
        if isinstance(base_id, ModelReference) and all(isinstance(i, ModelReference) for i in input_ids):
            planned = _planned_inputs(sys._getframe(1))
            with one_line_at_mergekits_cli():
                _check_for_stock_executor(tuple(input_ids), base_id, planned)

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        with one_line_at_mergekits_cli():
            return self._merge_group(group, **parameters)

    def _merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        roles = dict(parameters["role"].items())
        target_role = roles.pop(group.base.id, None)
        if target_role is not None:
            raise RecipeError(target_as_donor(group.base.id, target_role))
        donors = [entry.id for entry in group.non_base]
        if all(isinstance(donor, ModelReference) for donor in donors):
            _check_roles(tuple(sorted((str(k), v) for k, v in roles.items())))
            if isinstance(group.base.id, ModelReference) and group.metadata.name:
                # before a load `dtype` turned an integer tensor into floats
                refuse_non_float_inputs(group.metadata.name, [group.base.id, *donors])
        else:
            roles = roles_in_order(donors, roles)
        (merged,) = merge_tensor(
            group.base.tensor,
            {entry.id: entry.tensor for entry in group.non_base},
            roles,
            parameters["vector"],
            parameters["lambda"],
            name=group.metadata.name or "",
            vocab_axis=group.metadata.vocabulary_axis,
        )
        return merged


_AT_MERGEKITS_CLI: Dict[type, type] = {}


@contextmanager
def one_line_at_mergekits_cli():
    """mergekit's own command line is click's: a package error raised into it is also a
    click exception there, so `mergekit-yaml` prints one `Error: ...` line and exits 1,
    while Python callers of `run_merge` still catch it as the package's own error."""
    try:
        yield
    except Error as error:
        kind = type(error)
        both = _AT_MERGEKITS_CLI.setdefault(kind, type(kind.__name__, (kind, click.ClickException), {}))
        raise both(str(error)) from None


_OWN_EXECUTOR: ContextVar[bool] = ContextVar("reasoning_vector_own_executor", default=False)


@contextmanager
def own_executor():
    """Plan for this package's executor, which checked the recipe itself."""
    token = _OWN_EXECUTOR.set(True)
    try:
        yield
    finally:
        _OWN_EXECUTOR.reset(token)


# (model, layer_range or None, {parameter: setting}) for each input of what mergekit plans
Planned = Tuple[Tuple[ModelReference, Optional[Tuple[int, int]], Dict[str, Any]], ...]
PLAN_TIME = ("role", "vector", "lambda")


def _stock_output_path() -> Optional[str]:
    """The folder the stock executor is about to write, or None where it cannot be seen.

    mergekit tells a method nothing of its output, and writes it wherever it is told,
    an input's folder included. It validates a method's inputs while planning, from
    `MergePlanner.plan_to_disk(out_path)`, before any tensor is written: that call's
    frame is the one place the output path is known by then.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "plan_to_disk" and isinstance(frame.f_locals.get("out_path"), (str, os.PathLike)):
            return os.fspath(frame.f_locals["out_path"])
        frame = frame.f_back
    return None


@lru_cache(maxsize=None)
def _check_output_apart(out: str, models: Tuple[ModelReference, ...]) -> None:
    refuse_output_over_inputs(Path(out), [Path(m.model.path) for m in models])  # it passes over hub ids


def _planned_inputs(frame) -> Optional[Planned]:
    """The inputs, layer ranges and parameters of what mergekit is planning, when its
    planner is the caller.

    mergekit hands `validate_inputs` a slice's models only, without their layer
    ranges (which decide whether a donor deeper than the target fits: `slices:` may
    take part of it) or their parameters (so a missing role would surface only when
    the first tensor merges, after mergekit has created the output folder). Its
    planners hold both in the calling frame: `MergePlanner.normalize_config` the
    slice being validated, mergekit-pytorch's `plan_flat_merge` its config. Any
    other caller gets None, and the checks compare the layers target and donors
    both have.
    """
    from mergekit.config import OutputSliceDefinition

    local = frame.f_locals if frame is not None else {}
    output_slice, config = local.get("output_slice"), local.get("config")
    if isinstance(output_slice, OutputSliceDefinition):
        planner_config = getattr(local.get("self"), "config", None)
        wider = [output_slice.parameters, getattr(local.get("module_out"), "parameters", None)]
        wider.append(getattr(planner_config, "parameters", None))
        return tuple(
            (source.model, tuple(source.layer_range), _settings([source.parameters, *wider]))
            for source in output_slice.sources
        )
    if type(config).__name__ == "RawPyTorchMergeConfig" and type(config).__module__.startswith("mergekit."):
        entries = [(model.model, model.parameters) for model in config.models]
        if config.base_model is not None and config.base_model not in [m for m, _ in entries]:
            entries.append((config.base_model, None))
        return tuple(
            (ModelReference.model_validate({"model": {"path": model}}), None, _settings([own, config.parameters]))
            for model, own in entries
        )
    return None


def _settings(scopes) -> Dict[str, Any]:
    """The setting of each plan-time parameter from the first scope that has it, as mergekit resolves."""
    found = {}
    for name in PLAN_TIME:
        for scope in scopes:
            if scope and name in scope and scope[name] is not None:
                found[name] = scope[name]
                break
    return found


def _check_for_stock_executor(
    input_ids: Tuple[ModelReference, ...], base: ModelReference, planned: Optional[Planned] = None
) -> None:
    if _OWN_EXECUTOR.get():
        return
    layers: Any = COMMON
    if planned is not None:
        _check_planned_roles(base, planned)
        ranged = [(str(model), layer_range) for model, layer_range, _ in planned if layer_range is not None]
        if ranged:
            depths = {str(model): model_info(model).config.get(DEPTH) for model, _, _ in planned}
            layers = slice_layers(str(base), ranged, depths)
    _check_models(input_ids, base, layers)
    out = _stock_output_path()
    if out is not None:
        _check_output_apart(out, (base, *input_ids))


def _check_planned_roles(base: ModelReference, planned: Planned) -> None:
    """Roles and pairing at plan time, from settings that are plain values (filtered or
    per-layer settings are resolved per tensor, and checked when each tensor merges)."""
    donors, roles, vectors, lambdas = [], {}, {}, {}
    plain_lambdas = True
    for model, _, settings in planned:
        role = settings.get("role")
        if role is not None and not isinstance(role, str):
            return
        if model == base:
            if role is not None:
                raise RecipeError(target_as_donor(model, role))
            continue
        donors.append(model)
        roles[model] = role
        vector = settings.get("vector")
        if vector is not None and not isinstance(vector, str):
            return
        if vector is not None:
            vectors[model] = vector
        lam = settings.get("lambda", 1.0)
        plain_lambdas &= isinstance(lam, (int, float)) and not isinstance(lam, bool)
        lambdas[model] = lam
    check_roles(roles.items())
    pair_donors(donors, roles, vectors, lambdas if plain_lambdas else {})


def _check_models(input_ids: Tuple[ModelReference, ...], base: ModelReference, layers: LayerMaps = COMMON) -> None:
    """Check models before mergekit plans a tensor; refuse what its executor can't do.

    mergekit's executor requires equal shapes and writes every planned tensor, so
    resized vocabularies and untied donors of a tied target need this package's
    own executor, which implements the documented policies for both. The outcome
    is cached under the identity of every file involved, so a model changed on
    disk between two merges is checked again.
    """
    refs = tuple(dict.fromkeys((base, *input_ids)))
    frozen = (
        layers
        if layers is None or layers == COMMON
        else tuple(sorted((k, tuple(sorted(v.items()))) for k, v in layers.items()))
    )
    _check_models_of(input_ids, base, frozen, tuple(model_identity(ref) for ref in refs))


@lru_cache(maxsize=256)
def _check_models_of(input_ids, base, frozen_layers, identities) -> None:
    donors = [model_info(ref) for ref in input_ids if ref != base]
    if single_file(base) is not None:
        check_raw_compatible(model_info(base), donors)
        return
    layers = (
        frozen_layers if frozen_layers is None or frozen_layers == COMMON else {k: dict(v) for k, v in frozen_layers}
    )
    report = check_compatible(model_info(base), donors, layers=layers)
    if report.vocab_rows or report.dropped_heads:
        raise RecipeError(
            f"{report.notes()[0]}; the stock mergekit executor cannot do this, "
            "run `mergekit-reasoning merge RECIPE OUT` instead"
        )


def _check_roles(roles: Tuple[Tuple[str, str], ...]) -> None:
    check_roles([(ModelReference.model_validate(ref), role) for ref, role in roles])


reasoning_vector = ReasoningVectorMerge()


def ensure_registered() -> None:
    if NAME not in {m.spec.name for m in registry.registered_methods()}:
        registry.register(reasoning_vector)
    merge_card.install()  # where mergekit's card module is loaded already; else at plan time


ensure_registered()
