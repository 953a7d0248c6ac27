"""Stand-in models shared by the tests: built once per session, never downloaded."""

import itertools
from pathlib import Path

import pytest

from mergekit_reasoning.standins import write_standin, write_trio

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
_counter = itertools.count()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def fresh_dir(root: Path, name: str) -> Path:
    # mergekit caches loaders by path for the whole process: never reuse a path.
    return root / f"{name}-{next(_counter)}"


@pytest.fixture(scope="session")
def trio(models_root):
    """Tied tiny target, SFT and GRPO (Qwen2.5-1.5B's layout, tiny sizes)."""
    return write_trio(models_root / "tied")


@pytest.fixture(scope="session")
def untied_trio(models_root):
    return write_trio(models_root / "untied", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def make_model(models_root):
    """Write one more stand-in, from the trio's initialisation unless told otherwise."""

    def make(name: str = "extra", **options) -> Path:
        options.setdefault("seed", 0)
        options.setdefault("like_seed", 7)
        return write_standin(fresh_dir(models_root, name), **options)

    return make


def recipe_dict(target, grpo, sft, lam=1.0, **extra) -> dict:
    recipe = {
        "merge_method": "reasoning_vector",
        "base_model": str(target),
        "models": [
            {"model": str(grpo), "parameters": {"role": "grpo"}},
            {"model": str(sft), "parameters": {"role": "sft"}},
        ],
        "parameters": {"lambda": lam},
        "dtype": "bfloat16",
        "out_dtype": "bfloat16",
    }
    recipe.update(extra)
    return recipe
