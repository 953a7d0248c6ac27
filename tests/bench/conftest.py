import os
from pathlib import Path

import pytest

# The hub is switched off for every test by tests/conftest.py; only this is bench's own.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def trio(tmp_path_factory):
    from mergekit_reasoning.testing.standins import write_trio

    return write_trio(tmp_path_factory.mktemp("trio"))
