"""`reasoning_vector`: target + Σ λ·(GRPO − SFT), as a mergekit merge method.

Declared like mergekit's own methods (a spec of parameters and an input
contract) and registered by name on import. The target is the recipe's
`base_model`; each donor says `role: grpo` or `role: sft`, and optionally which
`vector` it belongs to when a recipe adds several. `lambda` is an ordinary
mergekit parameter, so filters and per-layer gradients apply.
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
from mergekit_reasoning.method.compat import check_compatible
from mergekit_reasoning.method.kernel import merge_tensor
from mergekit_reasoning.method.models import check_roles, model_info, refuse_non_float_inputs
from mergekit_reasoning.method.roles import DEFAULT_VECTOR, Role

NAME = "reasoning_vector"


class ReasoningVectorMerge(GroupMergeMethod):
    spec = MergeMethodSpec(
        name=NAME,
        pretty_name="Reasoning vector (target + λ·(GRPO − SFT))",
        reference_url="https://arxiv.org/abs/2509.01363",
        parameters=(
            ParameterSpec("role", Role, ParameterScope.NON_BASE),
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
        if isinstance(base_id, ModelReference) and all(isinstance(i, ModelReference) for i in input_ids):
            with _one_line_at_mergekits_cli():
                _check_for_stock_executor(tuple(input_ids), base_id)

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        with _one_line_at_mergekits_cli():
            return self._merge_group(group, **parameters)

    def _merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        if all(isinstance(entry.id, ModelReference) for entry in group.non_base):
            _check_roles(tuple(sorted((str(k), v) for k, v in parameters["role"].items())))
            if isinstance(group.base.id, ModelReference) and group.metadata.name:
                # before a load `dtype` turned an integer tensor into floats
                refuse_non_float_inputs(group.metadata.name, [group.base.id, *(e.id for e in group.non_base)])
        (merged,) = merge_tensor(
            group.base.tensor,
            {entry.id: entry.tensor for entry in group.non_base},
            parameters["role"],
            parameters["vector"],
            parameters["lambda"],
            name=group.metadata.name or "",
            vocab_axis=group.metadata.vocabulary_axis,
        )
        return merged


_AT_MERGEKITS_CLI: Dict[type, type] = {}


@contextmanager
def _one_line_at_mergekits_cli():
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


def _check_for_stock_executor(input_ids: Tuple[ModelReference, ...], base: ModelReference) -> None:
    if not _OWN_EXECUTOR.get():
        _check_models(input_ids, base)
        out = _stock_output_path()
        if out is not None:
            _check_output_apart(out, (base, *input_ids))


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
    refuse_output_over_inputs(Path(out), [Path(m.model.path) for m in models if os.path.exists(m.model.path)])


@lru_cache(maxsize=None)
def _check_models(input_ids: Tuple[ModelReference, ...], base: ModelReference) -> None:
    """Check models before mergekit plans a tensor; refuse what its executor can't do.

    mergekit's executor requires equal shapes and writes every planned tensor, so
    resized vocabularies and untied donors of a tied target need this package's
    own executor, which implements the documented policies for both.
    """
    donors = [model_info(ref) for ref in input_ids if ref != base]
    report = check_compatible(model_info(base), donors)
    if report.vocab_rows or report.dropped_heads:
        raise RecipeError(
            f"{report.notes()[0]}; the stock mergekit executor cannot do this, "
            "run `mergekit-reasoning merge RECIPE OUT` instead"
        )


@lru_cache(maxsize=None)
def _check_roles(roles: Tuple[Tuple[str, str], ...]) -> None:
    check_roles([(ModelReference.model_validate(ref), role) for ref, role in roles])


reasoning_vector = ReasoningVectorMerge()


def ensure_registered() -> None:
    if NAME not in {m.spec.name for m in registry.registered_methods()}:
        registry.register(reasoning_vector)


ensure_registered()
