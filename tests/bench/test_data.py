"""Data: fixtures and the full offline copies load for all four tasks; clear errors otherwise."""

import shutil

import pytest

from mergekit_reasoning.bench import BenchError, data
from mergekit_reasoning.bench.adversarial import insert_distractor
from mergekit_reasoning.bench.registry import BBH_SUBTASKS, check_data

pytest.importorskip("datasets")
hooks = pytest.importorskip("mergekit_reasoning.bench.tasks.mkr_hooks")


def test_fixtures_load_for_all_tasks(fixture_data):
    assert len(hooks.load_gsm8k(str(fixture_data))["test"]) == 2
    assert len(hooks.load_sciq(str(fixture_data))["test"]) == 2
    assert len(hooks.load_humaneval(str(fixture_data))["test"]) == 2
    assert len(hooks.load_bbh(str(fixture_data), subset="navigate")["test"]) == 1


def test_full_offline_data_loads_for_all_four_tasks(shared_data):
    gsm = hooks.load_gsm8k(str(shared_data))
    assert (len(gsm["train"]), len(gsm["test"])) == (7473, 1319)
    assert gsm["test"][0]["answer"].rsplit("#### ", 1)[1].strip().isdigit()
    he = hooks.load_humaneval(str(shared_data))["test"]
    assert len(he) == 164 and {"prompt", "test", "entry_point"} <= set(he.column_names)
    sciq = hooks.load_sciq(str(shared_data))["test"]
    assert len(sciq) == 1000 and {"support", "correct_answer", "distractor3"} <= set(sciq.column_names)
    total = 0
    for name in BBH_SUBTASKS:
        rows = hooks.load_bbh(str(shared_data), subset=name)["test"]
        assert set(rows.column_names) == {"input", "target"}
        total += len(rows)
    assert total == 6511


def test_canonical_humaneval_solutions_pass_in_the_sandbox(shared_data):
    he = hooks.load_humaneval(str(shared_data))["test"]
    for doc in he.select(range(8)):
        program = hooks.build_predictions([[doc["canonical_solution"]]], [doc])[0]
        reference = hooks.humaneval_reference(doc)
        assert hooks.pass_at_1([reference], [program]) == 1.0, doc["task_id"]
        broken = hooks.build_predictions([["    return None\n"]], [doc])[0]
        assert hooks.pass_at_1([reference], [broken]) == 0.0, doc["task_id"]


def test_missing_data_file_names_the_file(fixture_data, tmp_path):
    shutil.copytree(fixture_data, tmp_path / "d")
    (tmp_path / "d" / "bbh" / "snarks.json").unlink()
    with pytest.raises(BenchError, match=r"missing data file: .*bbh/snarks\.json"):
        check_data("bbh", tmp_path / "d")
    check_data("gsm8k_cot", tmp_path / "d")
    with pytest.raises(BenchError, match=r"missing data file: .*sciq/validation\.jsonl"):
        check_data("sciq", tmp_path)


def test_hub_is_the_default_and_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BenchError, match="openai/gsm8k.*--data-dir"):
        data.load("gsm8k", None)
    assert data.source("sciq", None) == {"hub": "allenai/sciq", "config": None}


def test_distractors_are_seeded_deterministic_and_keep_the_question():
    q = "Ann reads 4 pages a day. She reads for 3 days. How many pages does she read?"
    a, b = insert_distractor(q, seed=0), insert_distractor(q, seed=0)
    assert a == b and a != q and len(a) > len(q)
    assert a.endswith("How many pages does she read?")
    assert all(part in a for part in ("Ann reads 4 pages a day.", "She reads for 3 days."))
    assert any(insert_distractor(q, seed=s) != a for s in range(1, 6))


def test_adversarial_split_only_touches_test_questions(fixture_data):
    plain = hooks.load_gsm8k(str(fixture_data))
    adv = hooks.load_gsm8k(str(fixture_data), adversarial=True)
    assert adv["train"]["question"] == plain["train"]["question"]
    assert all(a != p for a, p in zip(adv["test"]["question"], plain["test"]["question"]))
    assert adv["test"]["answer"] == plain["test"]["answer"]
