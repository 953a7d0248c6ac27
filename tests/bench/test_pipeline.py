"""The whole offline pipeline: merge (+/− vector) → score three labelled models → table, JSON, plots.

Runs on tiny random stand-ins and the fixture data; scores are junk, the plumbing is not.
"""

import json

import pytest
from click.testing import CliRunner

from mergekit_reasoning.bench import BenchError
from mergekit_reasoning.cli import main

pytest.importorskip("lm_eval")
pytest.importorskip("matplotlib")

FAST = dict(limit=1, max_gen_toks=4, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def labelled(trio, tmp_path_factory):
    from mergekit_reasoning.bench.sweep import merge_lambdas
    from mergekit_reasoning.executor.recipe import Recipe

    recipe = Recipe.for_pair(trio["target"], trio["grpo"], trio["sft"])
    merged = merge_lambdas(recipe, [1.0, -1.0], tmp_path_factory.mktemp("merges"))
    return {"base": str(trio["target"]), "plus": str(merged[1.0]), "minus": str(merged[-1.0])}


@pytest.fixture(scope="module")
def run(labelled, fixture_data, tmp_path_factory):
    from mergekit_reasoning.bench import run_bench

    out = tmp_path_factory.mktemp("bench")
    doc = run_bench(
        labelled,
        "gsm8k,humaneval,sciq,bbh",
        conditions="plain",
        out_dir=out,
        data_dir=str(fixture_data),
        adversarial=True,
        log_samples=True,
        **FAST,
    )
    return out, doc


def test_scores_cover_every_model_condition_task_and_variant(run):
    _, doc = run
    seen = {(s["label"], s["condition"], s["task"], s["variant"]) for s in doc["scores"] if s["subtask"] is None}
    for label in ("base", "plus", "minus"):
        for cond in ("plain",):
            for task in ("gsm8k_cot", "gsm8k_5shot", "humaneval", "sciq", "bbh"):
                assert (label, cond, task, "plain") in seen
            assert (label, cond, "gsm8k_cot", "adversarial") in seen
    bbh_subtasks = {s["subtask"] for s in doc["scores"] if s["task"] == "bbh" and s["subtask"]}
    assert len(bbh_subtasks) == 27
    metrics = {(s["task"], s["metric"], s["filter"]) for s in doc["scores"]}
    assert {
        ("gsm8k_cot", "exact_match", "strict-match"),
        ("gsm8k_cot", "exact_match", "flexible-extract"),
        ("humaneval", "pass_at_1", "create_test"),
        ("sciq", "acc", "none"),
        ("sciq", "acc_norm", "none"),
        ("bbh", "exact_match", "get-answer"),
    } <= metrics
    for s in doc["scores"]:
        assert 0.0 <= s["value"] <= 1.0 and s["n"] >= 1
        assert s["stderr"] is None or s["stderr"] >= 0  # lm-eval gives none for single samples


def test_results_json_records_settings_versions_identities_and_samples(run):
    out, doc = run
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["limit"] == 1 and saved["settings"]["data_source"] == "local"
    assert saved["settings"]["conditions"] == ["plain"]
    assert saved["packages"]["lm_eval"] and saved["packages"]["torch"]
    for label in ("base", "plus", "minus"):
        ident = saved["models"][label]
        assert ident["source"] == "local" and len(ident["sha256"]) == 64
    assert len({m["sha256"] for m in saved["models"].values()}) == 3
    sample_sets = saved["samples"]
    first = next(s for s in sample_sets if s["task"] == "gsm8k_cot")["samples"]["mkr_gsm8k_cot"][0]
    assert {"doc_id", "target", "resps", "filtered_resps", "scores"} <= set(first)
    assert saved["data"]["gsm8k_cot"]["test"].endswith("gsm8k/test.jsonl")


def test_markdown_table_has_deltas_against_the_baseline(run):
    out, _ = run
    table = (out / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| task"))
    assert "| base | plus | Δ plus | minus | Δ minus |" in header
    assert "| humaneval | plain | pass_at_1 (create_test) | plain |" in table
    assert "| gsm8k_cot | adversarial |" in table
    assert "## Per subtask" in table and "| web_of_lies |" in table


def test_plot_is_a_png(run):
    out, _ = run
    assert (out / "plots" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "plots" / "deltas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_delta_has_paired_statistics_from_the_items_kept_in_results_json(run):
    out, doc = run
    saved = json.loads((out / "results.json").read_text())
    assert saved["statistics"]["seed"] == 0 and saved["statistics"]["n_resamples"] == 10_000
    # Per-item outcomes of every unit, compact: ids and values per metric and filter.
    entry = next(i for i in saved["items"] if i["label"] == "plus" and i["lm_task"] == "mkr_sciq")
    assert entry["ids"] == [0] and set(entry["values"]) == {"acc,none", "acc_norm,none"}
    assert len({i["lm_task"] for i in saved["items"] if i["task"] == "bbh" and i["label"] == "base"}) == 27
    # One comparison per Δ cell, and each Δ is the records' difference.
    scores = {(s["label"], s["task"], s["variant"], s["subtask"], s["metric"], s["filter"]): s for s in doc["scores"]}
    comparisons = saved["comparisons"]
    for label in ("plus", "minus"):
        rows = [k for k in scores if k[0] == label]
        keyed = {
            (c["task"], c["variant"], c["subtask"], c["metric"], c["filter"])
            for c in comparisons
            if c["label"] == label
        }
        assert keyed == {k[1:] for k in rows}
    for c in comparisons:
        assert c["baseline"] == "base" and c["level"] == 0.95
        key = (c["task"], c["variant"], c["subtask"], c["metric"], c["filter"])
        assert c["delta"] == pytest.approx(scores[(c["label"], *key)]["value"] - scores[("base", *key)]["value"])
        if c["task"] == "bbh" and c["subtask"] is None:  # the group, one item per subtask: no spread to resample
            assert c["method"] == "paired bootstrap" and c["strata"] == 27 and c["ci"] is None
        else:
            assert c["method"] == "exact McNemar" and c["n"] == 1 and c["p"] == 1.0 and not c["significant"]
    table = (out / "table.md").read_text()
    assert "95% paired interval" in table and "▲/▼: the interval lies above/below 0" in table
    assert "## Paired comparisons" in table and "| MDE (80% power) |" in table
    row = next(line for line in table.splitlines() if line.startswith("| sciq | plain | acc_norm (none) | plain |"))
    assert "[-97.5, +97.5]" in row or "▲" in row or "▼" in row  # one item: the widest interval


def test_scores_cached_before_items_were_kept_are_reused_and_named(run, labelled, fixture_data, tmp_path, monkeypatch):
    """A cache written by an older version (records only) still serves its scores; those Δ lose their interval."""
    import shutil

    from mergekit_reasoning.bench import run_bench

    from .spies import spy_on_children

    out, doc = run
    copy = tmp_path / "old"
    shutil.copytree(out / "cache", copy / "cache")
    for path in (copy / "cache").glob("*.json"):
        unit = json.loads(path.read_text())
        if any(r["metric"] == "acc_norm" for r in unit["records"]) and unit["items"]["mkr_sciq"]:
            unit.pop("items")
            path.write_text(json.dumps(unit))
    jobs = spy_on_children(monkeypatch)
    again = run_bench(
        labelled,
        "gsm8k,humaneval,sciq,bbh",
        out_dir=copy,
        data_dir=str(fixture_data),
        adversarial=True,
        log_samples=True,
        **FAST,
    )
    assert jobs == [] and again["scores"] == doc["scores"]
    assert not any(c["task"] == "sciq" for c in again["comparisons"])
    assert {c["task"] for c in again["comparisons"]} == {c["task"] for c in doc["comparisons"]} - {"sciq"}
    assert "base sciq (plain, plain)" in again["statistics"]["units_without_items"]
    table = (copy / "table.md").read_text()
    assert "No paired interval where a score was cached before per-item outcomes were kept" in table
    row = next(line for line in table.splitlines() if line.startswith("| sciq | plain | acc_norm (none) | plain |"))
    assert "[" not in row


def test_cli_scores_only_new_units_and_prints_the_table(run, labelled, fixture_data, monkeypatch):
    """A second run adds a condition: finished (plain) units are reused, only new ones are scored."""
    out, _ = run
    from .spies import spy_on_children

    jobs = spy_on_children(monkeypatch)
    args = [f"--model={k}={v}" for k, v in labelled.items() if k != "plus"]
    args += [
        "--tasks",
        "sciq,humaneval",
        "--conditions",
        "plain,think+chat",
        "--out",
        str(out),
        "--data-dir",
        str(fixture_data),
        "--limit",
        "1",
        "--max-gen-toks",
        "4",
        "--log-samples",
        "--baseline",
        "minus",
        "--batch-size",
        "4",
        "--adversarial",
    ]
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 0, result.output
    assert "| minus | base | Δ base |" in result.output
    scored = [
        (tuple(u["name"] for u in r["units"]), r["condition"]["chat"], r["condition"]["prompt"] == "think")
        for job in jobs
        for r in job["runs"]
    ]
    assert len(jobs) == 2 and len(scored) == 2 and all(s[1] and s[2] for s in scored)
    assert all(set(s[0]) == {"mkr_sciq", "mkr_humaneval"} for s in scored)
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["conditions"] == ["plain", "think+chat"]
    assert {s["condition"] for s in saved["scores"]} == {"plain", "think+chat"}


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "a=/nonexistent/model", "--tasks", "sciq"],
            "cannot load model 'a': /nonexistent/model is not a folder",
        ),
        (["--model", "a=__TARGET__", "--tasks", "sciq,mmlu"], "unknown task 'mmlu'"),
        (["--model", "a__TARGET__", "--tasks", "sciq"], "--model expects LABEL=PATH_OR_HUB_ID"),
        (["--model", "a=__TARGET__", "--conditions", "loud"], "unknown condition 'loud'"),
        (["--model", "a=__TARGET__", "--baseline", "zz"], "baseline 'zz' is not one of the model labels"),
        (["--sweep", "0,1", "--target", "__TARGET__"], "--sweep needs --target, --sft and --grpo"),
    ],
)
def test_cli_errors_are_one_clear_line(args, message, trio, fixture_data, tmp_path):
    args = [a.replace("__TARGET__", str(trio["target"])) for a in args]
    result = CliRunner().invoke(main, ["bench"] + args + ["--data-dir", str(fixture_data), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_missing_data_file_is_a_clear_error(trio, tmp_path):
    result = CliRunner().invoke(
        main, ["bench", "--model", f"a={trio['target']}", "--tasks", "sciq", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code != 0 and "missing data file:" in result.output and "sciq" in result.output


def test_model_whose_weights_cannot_load_is_named(trio, fixture_data, tmp_path):
    import shutil

    from mergekit_reasoning.bench import run_bench

    broken = tmp_path / "broken"
    shutil.copytree(trio["target"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BenchError, match=r"cannot load model 'bad' from .*broken"):
        run_bench({"bad": str(broken)}, "sciq", out_dir=tmp_path / "o", data_dir=str(fixture_data), **FAST)
