"""Which donor is the GRPO side and which the SFT side of which vector.

A recipe names each donor's role (`grpo` or `sft`) and, for merges that add more
than one vector, the `vector` it belongs to. Every vector needs exactly one of
each role and one λ; anything else is an error that names the models involved.
A donor with role `vector` is an extracted vector folder and stands alone.

Models must say their role. mergekit's in-memory API (`merge_state_dicts`), whose
generic callers pass no method-specific parameters, may leave them out: its
inputs are then read in order, base, GRPO, SFT (`roles_in_order`).
"""

import math
from dataclasses import dataclass
from typing import Dict, Generic, Hashable, List, Mapping, Optional, Sequence, Tuple, TypeVar

from typing_extensions import Literal

from mergekit_reasoning.core.errors import RecipeError

Role = Literal["grpo", "sft", "vector"]
ROLES: Tuple[str, ...] = ("grpo", "sft")
STORED = "vector"
DEFAULT_VECTOR = "reasoning"

M = TypeVar("M", bound=Hashable)
# The kernel does its arithmetic in float32 (float64 for float64 inputs): a λ past float32's
# range would be infinite there, and so would every weight it touches.
LAMBDA_LIMIT = 3.4028234663852886e38


def lambda_problem(lam) -> Optional[str]:
    """Why `lam` cannot be a λ, or None: a finite number within float32's range."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        return f"lambda must be a number, got {lam!r}"
    if not math.isfinite(lam) or abs(lam) > LAMBDA_LIMIT:
        return f"lambda must be finite (within float32's range), got {lam}"
    return None


@dataclass(frozen=True)
class VectorPair(Generic[M]):
    """One reasoning vector: λ·(grpo − sft), or λ·grpo for a stored vector (sft None)."""

    name: str
    grpo: M
    sft: Optional[M]
    lam: float


def pair_donors(
    donors: Sequence[M],
    roles: Mapping[M, str],
    vectors: Mapping[M, str],
    lambdas: Mapping[M, float],
    *,
    where: str = "",
) -> List[VectorPair[M]]:
    """Group donors into vectors, in the order their first donor appears."""
    suffix = f" (at {where})" if where else ""
    by_vector: Dict[str, Dict[str, List[M]]] = {}
    for donor in donors:
        problem = lambda_problem(lambdas.get(donor, 1.0))
        if problem is not None:
            raise RecipeError(f"model {donor}: {problem}{suffix}")
        role = roles.get(donor)
        if role is None:
            raise RecipeError(f"model {donor} has no role: give it `role: grpo` or `role: sft`{suffix}")
        if role not in ROLES + (STORED,):
            raise RecipeError(f"model {donor} has unknown role {role!r}: use 'grpo', 'sft' or 'vector'{suffix}")
        name = vectors.get(donor, DEFAULT_VECTOR if role != STORED else str(donor))
        by_vector.setdefault(name, {r: [] for r in ROLES + (STORED,)})[role].append(donor)

    pairs = []
    for name, members in by_vector.items():
        if members[STORED]:
            mixed = members[STORED][1:] + members["grpo"] + members["sft"]
            if mixed:
                raise RecipeError(
                    f"vector {name!r}: {mixed[0]} shares it with the stored vector {members[STORED][0]}; "
                    f"give each its own `vector:` name{suffix}"
                )
            donor = members[STORED][0]
            pairs.append(VectorPair(name=name, grpo=donor, sft=None, lam=float(lambdas.get(donor, 1.0))))
            continue
        for role in ROLES:
            found = members[role]
            if len(found) > 1:
                names = ", ".join(map(str, found))
                raise RecipeError(
                    f"vector {name!r} has {len(found)} {role} models ({names}); it needs exactly one{suffix}"
                )
            if not found:
                other = members[ROLES[1 - ROLES.index(role)]][0]
                raise RecipeError(f"vector {name!r} has no {role} model to pair with {other}{suffix}")
        grpo, sft = members["grpo"][0], members["sft"][0]
        lam_g, lam_s = float(lambdas.get(grpo, 1.0)), float(lambdas.get(sft, 1.0))
        if lam_g != lam_s:
            raise RecipeError(
                f"vector {name!r}: lambda {lam_g} on {grpo} differs from {lam_s} on {sft}; give both the same{suffix}"
            )
        pairs.append(VectorPair(name=name, grpo=grpo, sft=sft, lam=lam_g))
    return pairs


def roles_in_order(donors: Sequence[M], roles: Mapping[M, Optional[str]]) -> Dict[M, Optional[str]]:
    """The roles of in-memory inputs: as given, or, when none is given, GRPO then SFT.

    Only for mergekit's in-memory API, where the inputs are tensors with no names
    to mistake; a recipe's models always say their role (`pair_donors` names any
    that does not)."""
    given = {donor: roles.get(donor) for donor in donors}
    if any(role is not None for role in given.values()):
        return given
    if len(donors) != 2:
        raise RecipeError(
            f"reasoning_vector without roles reads its inputs as base, GRPO, SFT, so it needs two besides "
            f"the base, not {len(donors)}: give each `role: grpo` or `role: sft`"
        )
    return {donors[0]: "grpo", donors[1]: "sft"}


def target_as_donor(target, role: str) -> str:
    """The line for a target that a recipe also lists as a donor, and what to run instead."""
    if role == "sft":
        instead = f"{target} + λ·(GRPO − {target}) is task_arithmetic with the GRPO model at weight λ"
    elif role == "grpo":
        instead = f"{target} + λ·({target} − SFT) is task_arithmetic with the SFT model at weight −λ"
    else:
        return f"model {target} is the target (base_model), which takes no role, but it is given role {role!r}"
    return (
        f"model {target} is the target (base_model) and is also listed as the {role} donor, which "
        f"reasoning_vector cannot do (it keeps the target apart from its donors); {instead}, "
        f"base_model {target} and normalize: false"
    )


def recipe_entries(config) -> list:
    """Each model a mergekit configuration lists (under `models:`, `slices:` or `modules:`),
    once, in order, with its own parameters: the first listing of a model counts."""
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
