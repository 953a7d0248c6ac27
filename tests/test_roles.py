"""Pairing donors into vectors: every bad role assignment names the models."""

import pytest

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.method.roles import pair_donors


def pair(roles, vectors=None, lambdas=None):
    return pair_donors(list(roles), roles, vectors or {}, lambdas or {})


def test_one_vector():
    (p,) = pair({"A": "grpo", "B": "sft"}, lambdas={"A": 0.5, "B": 0.5})
    assert (p.grpo, p.sft, p.lam, p.name) == ("A", "B", 0.5, "reasoning")


def test_several_vectors_in_order_of_appearance():
    pairs = pair(
        {"A": "sft", "B": "grpo", "C": "grpo", "D": "sft"},
        vectors={"A": "math", "B": "math", "C": "code", "D": "code"},
    )
    assert [(p.name, p.grpo, p.sft) for p in pairs] == [("math", "B", "A"), ("code", "C", "D")]


@pytest.mark.parametrize(
    "roles, vectors, lambdas, message",
    [
        ({"A": "grpo", "B": None}, {}, {}, "model B has no role"),
        ({"A": "grpo", "B": "rl"}, {}, {}, "model B has unknown role 'rl'"),
        ({"A": "grpo", "B": "grpo", "C": "sft"}, {}, {}, "2 grpo models (A, B)"),
        ({"A": "grpo", "B": "sft", "C": "sft"}, {}, {}, "2 sft models (B, C)"),
        ({"A": "grpo"}, {}, {}, "no sft model to pair with A"),
        ({"A": "grpo", "B": "sft"}, {"B": "other"}, {}, "no sft model to pair with A"),
        ({"A": "grpo", "B": "sft"}, {}, {"A": 1.0, "B": 0.5}, "lambda 1.0 on A differs from 0.5 on B"),
    ],
)
def test_bad_roles_name_the_model(roles, vectors, lambdas, message):
    roles = {k: v for k, v in roles.items()}
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pair_donors(list(roles), {k: v for k, v in roles.items() if v}, vectors, lambdas)
