"""Task names, conditions, task configs and answer extraction (lm-eval's filters on our YAMLs)."""

from pathlib import Path

import pytest
import yaml

from mergekit_reasoning.bench import BenchError
from mergekit_reasoning.bench.conditions import Condition, parse_conditions
from mergekit_reasoning.bench.registry import BBH_SUBTASKS, TASKS_DIR, expand

lm_eval = pytest.importorskip("lm_eval")


def test_task_names_expand_and_unknown_is_one_clear_error():
    assert expand("gsm8k,sciq") == ["gsm8k_cot", "gsm8k_5shot", "sciq"]
    assert expand(["BBH", "humaneval", "bbh"]) == ["bbh", "humaneval"]
    with pytest.raises(BenchError, match="unknown task 'mmlu'"):
        expand("gsm8k,mmlu")


def test_conditions():
    assert [c.name for c in parse_conditions("plain,think,chat,think+chat")] == [
        "plain",
        "think",
        "plain+chat",
        "think+chat",
    ]
    assert parse_conditions(None) == [Condition()]
    assert parse_conditions("think")[0].system_instruction
    with pytest.raises(BenchError, match="unknown condition"):
        parse_conditions("loud")


def test_all_27_bbh_subtasks_and_their_exemplars_match_lm_eval():
    assert len(BBH_SUBTASKS) == 27
    theirs_dir = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "cot_fewshot"
    for name in BBH_SUBTASKS:
        ours = yaml.safe_load((TASKS_DIR / f"mkr_bbh_cot_fewshot_{name}.yaml").read_text())
        theirs = yaml.safe_load((theirs_dir / f"{name}.yaml").read_text())
        for key in ("description", "doc_to_text"):
            assert ours[key] == theirs[key], (name, key)
        assert ours["fewshot_config"]["samples"] == theirs["fewshot_config"]["samples"], name


def test_gsm8k_prompts_filters_and_stops_match_lm_eval():
    from lm_eval.tasks._yaml_loader import load_yaml

    base = Path(lm_eval.__file__).parent / "tasks" / "gsm8k"
    for ours_name, theirs_name in (("mkr_gsm8k_cot", "gsm8k-cot"), ("mkr_gsm8k", "gsm8k")):
        ours = load_yaml(TASKS_DIR / f"{ours_name}.yaml", resolve_func=False)
        theirs = load_yaml(base / f"{theirs_name}.yaml", resolve_func=False)
        for key in ("doc_to_text", "filter_list", "generation_kwargs", "metric_list", "num_fewshot"):
            assert ours[key] == theirs[key], (ours_name, key)
        assert ours.get("fewshot_config") == theirs.get("fewshot_config")


def test_humaneval_prompts_generation_and_stops_match_lm_eval():
    """Only the scoring path differs: the reference is the doc's prompt, test and entry point."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from mergekit_reasoning.bench.tasks.mkr_hooks import humaneval_reference

    ours = load_yaml(TASKS_DIR / "mkr_humaneval.yaml", resolve_func=False)
    theirs = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "humaneval" / "humaneval.yaml", resolve_func=False)
    for key in (
        "output_type",
        "test_split",
        "doc_to_text",
        "generation_kwargs",
        "repeats",
        "num_fewshot",
        "unsafe_code",
    ):
        assert ours[key] == theirs[key], key
    assert [f["name"] for f in ours["filter_list"]] == [f["name"] for f in theirs["filter_list"]] == ["create_test"]
    assert theirs["doc_to_target"] == "{{test}}\ncheck({{entry_point}})"
    doc = {"prompt": "def f():\n", "test": "def check(c): pass\n", "entry_point": "f", "canonical_solution": "x"}
    assert humaneval_reference(doc) == {"prompt": "def f():\n", "test": "def check(c): pass\n", "entry_point": "f"}


def test_task_manager_indexes_every_task():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    names = set(tm.all_tasks)
    assert {
        "mkr_gsm8k",
        "mkr_gsm8k_cot",
        "mkr_gsm8k_adv",
        "mkr_gsm8k_cot_adv",
        "mkr_sciq",
        "mkr_humaneval",
        "mkr_bbh_cot_fewshot",
    } <= names
    assert all(f"mkr_bbh_cot_fewshot_{n}" in names for n in BBH_SUBTASKS)


@pytest.mark.parametrize(
    "task, response, expected",
    [
        ("gsm8k_cot", "3 + 4 = 7 apples. The answer is 7.", {"strict-match": "7", "flexible-extract": "7."}),
        (
            "gsm8k_cot",
            "He pays $1,200 in total. The answer is 1,200.",
            {"strict-match": "1,200", "flexible-extract": "1,200."},
        ),
        ("gsm8k_cot", "The answer is -3.", {"strict-match": "-3", "flexible-extract": "-3."}),
        ("gsm8k_cot", "I think it is 12 or maybe 15", {"strict-match": "[invalid]", "flexible-extract": "15"}),
        ("gsm8k_5shot", "4 * 3 = 12\n#### 12", {"strict-match": "12", "flexible-extract": "12"}),
        ("gsm8k_5shot", "no number here", {"strict-match": "[invalid]", "flexible-extract": "[invalid]"}),
        ("bbh", "Both are false. So the answer is (B).", {"get-answer": "(B)"}),
        ("bbh", "So the answer is No.", {"get-answer": "No"}),
        ("bbh", "I cannot tell", {"get-answer": "[invalid]"}),
    ],
)
def test_answer_extraction(task, response, expected):
    from mergekit_reasoning.bench.extract import extract

    assert extract(task, response) == expected


def test_exact_match_normalisation_matches_gold():
    """GSM8K's exact_match ignores commas, $ and a final period, as lm-eval's YAML says."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.tasks._yaml_loader import load_yaml

    metric = load_yaml(TASKS_DIR / "mkr_gsm8k_cot.yaml", resolve_func=False)["metric_list"][0]
    kwargs = {k: metric[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    score = exact_match_hf_evaluate(predictions=["1,200."], references=["1200"], **kwargs)["exact_match"]
    assert score == 1.0


def test_humaneval_program_is_prompt_plus_completion():
    from mergekit_reasoning.bench.extract import extract

    out = extract("humaneval", "    return a + b", {"prompt": "def add(a, b):\n"})
    assert out == {"create_test": ["def add(a, b):\n    return a + b"]}


def test_single_bbh_subtasks_are_tasks_of_their_own():
    from mergekit_reasoning.bench.registry import lm_eval_name, variants

    assert expand("bbh_navigate,sciq,BBH_web_of_lies") == ["bbh_navigate", "sciq", "bbh_web_of_lies"]
    assert lm_eval_name("bbh_navigate") == "mkr_bbh_cot_fewshot_navigate"
    assert variants("bbh_navigate", adversarial=True) == ["plain"]
    assert all(expand(f"bbh_{name}") == [f"bbh_{name}"] for name in BBH_SUBTASKS)
    # The group scores every subtask already, and lm-eval refuses a task twice in one run.
    with pytest.raises(BenchError, match="bbh_navigate is part of bbh"):
        expand("bbh,bbh_navigate")


@pytest.mark.parametrize(
    "name, hint", [("bbh_navigat", "did you mean bbh_navigate?"), ("bbh_", ""), ("sciqq", "did you mean sciq?")]
)
def test_unknown_task_is_one_line_listing_the_valid_names(name, hint):
    with pytest.raises(BenchError) as info:
        expand(f"sciq,{name}")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"unknown task {name!r}; {hint}")
    assert "known tasks: bbh, gsm8k, gsm8k_5shot, gsm8k_cot, humaneval, sciq" in message
    assert all(f"bbh_{s}" in message for s in BBH_SUBTASKS)


def test_a_subtask_needs_only_its_own_data_file(fixture_data, tmp_path):
    import shutil

    from mergekit_reasoning.bench.registry import check_data

    (tmp_path / "bbh").mkdir()
    shutil.copy(fixture_data / "bbh" / "navigate.json", tmp_path / "bbh")
    check_data("bbh_navigate", tmp_path)
    with pytest.raises(BenchError, match="missing data file: .*bbh/boolean_expressions.json"):
        check_data("bbh", tmp_path)


def test_data_source_names_the_split_scored(fixture_data, tmp_path):
    import shutil

    from mergekit_reasoning.bench.registry import data_source
    from mergekit_reasoning.bench.report import data_line

    # The fixture copy of SciQ has only validation: that is what lm-eval's test split is filled from.
    assert data_source("sciq", fixture_data)["split"] == "validation"
    assert data_source("gsm8k_cot", fixture_data)["split"] == "test"
    assert data_source("bbh_navigate", fixture_data)["test"].endswith("bbh/navigate.json")
    hub = data_source("sciq", None)
    assert (hub["origin"], hub["split"], hub["hub"]) == ("hub", "test", "allenai/sciq")
    # A local test file wins over validation.
    (tmp_path / "sciq").mkdir()
    shutil.copy(fixture_data / "sciq" / "validation.jsonl", tmp_path / "sciq" / "test.jsonl")
    assert data_source("sciq", tmp_path)["split"] == "test"

    def line(data_dir, tasks):
        settings = {"data_source": "local" if data_dir else "hub"}
        return data_line({"settings": settings, "data": {t: data_source(t, data_dir) for t in tasks}})

    assert line(fixture_data, ["gsm8k_cot", "gsm8k_5shot", "sciq", "bbh", "humaneval"]) == (
        "GSM8K: test (local); SciQ: validation (local); BBH: test (local); HumanEval: test (local)"
    )
    assert line(None, ["sciq", "bbh_navigate"]) == "SciQ: test (hub allenai/sciq); BBH: test (hub SaylorTwift/bbh)"
    # A results file from before splits were recorded still renders.
    assert (
        data_line({"settings": {"data_source": "local"}, "data": {"sciq": {"test": "x/sciq/validation.jsonl"}}})
        == "local"
    )


def test_bench_cli_scores_single_bbh_subtasks(trio, fixture_data, tmp_path):
    from click.testing import CliRunner

    from mergekit_reasoning.cli import main

    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            f"a={trio['target']}",
            "--tasks",
            "bbh_navigate,bbh_web_of_lies",
            "--data-dir",
            str(fixture_data),
            "--out",
            str(tmp_path),
            "--limit",
            "1",
            "--max-gen-toks",
            "4",
            "--batch-size",
            "4",
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| bbh_navigate | plain | exact_match (get-answer) | plain | 1 |" in result.output
    assert "| bbh_web_of_lies | plain | exact_match (get-answer) | plain | 1 |" in result.output
    assert "Data: BBH: test (local); limit: 1." in result.output
    assert "## Per subtask" not in result.output
