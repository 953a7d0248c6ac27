"""Stand-in models shared by the tests: built once per session, never downloaded.

Before anything else is imported, every cache the tests (and the tools they run)
could write is pointed into one temporary folder for the session, removed at exit,
so nothing lands in the user's home (Ray's token included); and the hub is switched
off, so a test that would reach the network fails fast instead of waiting on retries.
"""

import atexit
import itertools
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

CACHE_ROOT = Path(tempfile.mkdtemp(prefix="mergekit-reasoning-tests-"))
atexit.register(shutil.rmtree, CACHE_ROOT, ignore_errors=True)
CACHE_DIRS = {
    "XDG_CACHE_HOME": "xdg-cache",  # the default of most tools below
    "MERGEKIT_REASONING_CACHE": "mergekit-reasoning",  # our file-hash cache
    "HF_HOME": "huggingface",
    "HF_HUB_CACHE": "huggingface/hub",
    "HF_DATASETS_CACHE": "huggingface/datasets",  # datasets' lock files and Arrow caches
    "MPLCONFIGDIR": "matplotlib",  # matplotlib's font cache
    "NUMBA_CACHE_DIR": "numba",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "VLLM_CACHE_ROOT": "vllm",
}
for _variable, _folder in CACHE_DIRS.items():
    os.environ[_variable] = str(CACHE_ROOT / _folder)
for _variable in ("TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE"):  # older names that would win over HF_HOME
    os.environ.pop(_variable, None)
os.environ["HF_HUB_OFFLINE"] = "1"
# Ray (2.60) starts a local cluster with token authentication and, finding no token, writes one to
# ~/.ray/auth_token: the test clusters get a token of their own, in the session's folder.
_RAY_TOKEN = CACHE_ROOT / "ray-auth-token"
_RAY_TOKEN.write_text(secrets.token_hex(32))
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_RAY_TOKEN)
os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the file
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402

from mergekit_reasoning.executor.recipe import Recipe  # noqa: E402
from mergekit_reasoning.testing.standins import write_standin, write_trio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
_counter = itertools.count()


@pytest.fixture(autouse=True)
def close_mergekit_shards():
    """mergekit's loader cache keeps each model's current shard mapped for the whole
    process; close them after every test, so the session's memory does not grow
    with every model a test has merged."""
    yield
    if "mergekit.io.tasks" in sys.modules:
        sys.modules["mergekit.io.tasks"].LoaderCache().flush_all()


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
def qwen_trio(models_root):
    """Target, SFT and GRPO with Qwen2.5-1.5B's real widths, heads and 151,936 tied
    vocabulary rows, one layer instead of 28: written once (about 2 GB), shared by
    every test that needs the real shapes."""
    return write_trio(models_root / "qwen2.5-1.5b", shape="qwen2.5-1.5b", num_layers=1)


@pytest.fixture(scope="session")
def make_model(models_root):
    """Write one more stand-in, from the trio's initialisation unless told otherwise."""

    def make(name: str = "extra", **options) -> Path:
        options.setdefault("seed", 0)
        options.setdefault("like_seed", 7)
        return write_standin(fresh_dir(models_root, name), **options)

    return make


def recipe_dict(target, grpo, sft, lam=1.0, **extra) -> dict:
    """The plain pair recipe the sweep writes (`Recipe.for_pair`), with `lam` as given (hostile
    tests give other things than numbers) and `extra` keys set."""
    recipe = Recipe.for_pair(target, grpo, sft).data
    recipe["parameters"] = {"lambda": lam}
    return {**recipe, **extra}
