"""Declared isolation: weaker than full needs an opt-in, and the mode that ran is recorded.

These tests fake what the host lacks, so they run everywhere, bubblewrap or not.
"""

import json

import pytest
from click.testing import CliRunner

from mergekit_reasoning.bench import sandbox
from mergekit_reasoning.bench.report import markdown_table
from mergekit_reasoning.cli import main

PROMPT = 'def add(a, b):\n    """The sum."""\n'
PROGRAM = PROMPT + "    return a + b\n"
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
NOTHING = sandbox.Isolation(
    bwrap=None,
    cgroup=None,
    private_uid=False,
    missing=("bubblewrap (not installed)", "aggregate memory and process limits (no cgroup)"),
)


@pytest.fixture
def bare_host(monkeypatch):
    """A host with neither bubblewrap nor a cgroup; the opt-in is reset afterwards."""
    monkeypatch.setattr(sandbox.probe, "isolation", lambda: NOTHING)
    yield
    sandbox.allow_weak_isolation(False)


def test_without_opt_in_scoring_stops_with_one_line_naming_what_is_missing(bare_host):
    with pytest.raises(sandbox.SandboxUnavailable) as err:
        sandbox.check_program(PROGRAM, PROMPT, TEST, "add")
    message = str(err.value)
    assert "\n" not in message
    assert "bubblewrap (not installed)" in message and "no cgroup" in message and "--allow-weak-sandbox" in message


def test_cli_stops_before_loading_anything(bare_host, tmp_path):
    result = CliRunner().invoke(
        main,
        ["bench", "--model", f"a={tmp_path / 'no-such-model'}", "--tasks", "humaneval", "--out", str(tmp_path / "out")],
    )
    assert result.exit_code != 0
    assert "full sandbox isolation" in result.output and "no-such-model" not in result.output
    assert not (tmp_path / "out").exists()


def test_with_opt_in_weak_isolation_still_scores_honestly(bare_host):
    assert sandbox.declare(allow_weak=True).startswith("WEAK, missing bubblewrap (not installed)")
    assert sandbox.check_program(PROGRAM, PROMPT, TEST, "add").passed
    out = sandbox.check_program(PROGRAM.replace("+", "-") + "import os\nos._exit(0)\n", PROMPT, TEST, "add")
    assert not out.passed and out.isolation == "weak"
    assert not sandbox.check_program(PROGRAM.replace("+", "-") + "exit()\n", PROMPT, TEST, "add").passed


def test_the_table_shows_the_isolation():
    doc = {
        "models": {"a": {}},
        "scores": [],
        "settings": {"baseline": "a", "data_source": "local", "limit": None, "sandbox": NOTHING.describe()},
    }
    table = markdown_table(doc)
    assert "HumanEval sandbox: WEAK, missing bubblewrap (not installed); aggregate memory" in table
    doc["settings"]["sandbox"] = None
    assert "HumanEval sandbox" not in markdown_table(doc)


def test_run_bench_records_the_isolation(trio, fixture_data, tmp_path):
    pytest.importorskip("lm_eval")
    from mergekit_reasoning.bench import run_bench

    try:
        doc = run_bench(
            {"t": str(trio["target"])},
            "humaneval",
            out_dir=tmp_path,
            data_dir=str(fixture_data),
            limit=1,
            max_gen_toks=4,
            batch_size=1,
            progress=False,
            plots=False,
            allow_weak_sandbox=True,
        )
    finally:
        sandbox.allow_weak_isolation(False)
    recorded = json.loads((tmp_path / "results.json").read_text())["settings"]["sandbox"]
    assert recorded == doc["settings"]["sandbox"] == sandbox.isolation().describe()
    assert f"HumanEval sandbox: {recorded}." in (tmp_path / "table.md").read_text()
