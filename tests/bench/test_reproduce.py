"""`reproduce RECIPE`: +v and −v merged from a recipe, base, +v and −v scored under the paper's
conditions, and the paper's reported deltas set beside the measured ones.

Runs on the tiny random stand-ins and the fixture data: scores are junk, the plumbing is not.
"""

import pytest
import yaml
from click.testing import CliRunner

from mergekit_reasoning.bench.paper import comparison_markdown, size_of
from mergekit_reasoning.cli import main
from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.shipped import recipes_dir
from mergekit_reasoning.testing.standins import retarget

pytest.importorskip("lm_eval")
pytest.importorskip("matplotlib")

# gsm8k_cot (with its adversarial variant), a log-likelihood task and one BBH subtask
# cover every kind of unit in seconds; the table layout of the full set is tested below.
TASKS = "gsm8k_cot,sciq,bbh_navigate"
FAST = dict(limit=1, max_gen_toks=4, batch_size=4, progress=False)


def _recipe(folder, trio, shipped="qwen1.5b_add.yml", **changes):
    """A shipped recipe pointed at the stand-ins, with top-level keys changed (None drops one)."""
    data = retarget(
        yaml.safe_load((recipes_dir() / shipped).read_text()),
        str(trio["target"]),
        {"grpo": str(trio["grpo"]), "sft": str(trio["sft"])},
    )
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{len(list(folder.iterdir()))}-{shipped}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class _Calls:
    """Counts the merges (λ values per pass) and the lm-eval runs that really happen (in scoring children)."""

    def __init__(self, monkeypatch):
        from mergekit_reasoning.executor import stream

        from .spies import spy_on_children

        self.merges, self.jobs = [], spy_on_children(monkeypatch)
        real_merge = stream.merge

        def merge(checked, outs, options, *, lambdas=None, **k):
            self.merges.append(list(lambdas))
            return real_merge(checked, outs, options, lambdas=lambdas, **k)

        monkeypatch.setattr(stream, "merge", merge)

    @property
    def scores(self):
        """(model, system instruction, lm-eval task names) of each lm-eval run."""
        from mergekit_reasoning.bench.conditions import Condition

        return [
            (job["ref"], Condition(**run["condition"]).system_instruction, tuple(u["name"] for u in run["units"]))
            for job in self.jobs
            for run in job["runs"]
        ]

    def clear(self):
        self.merges.clear(), self.jobs.clear()


@pytest.fixture(scope="module")
def reproduced(trio, fixture_data, tmp_path_factory):
    from mergekit_reasoning.bench.reproduce import reproduce

    root = tmp_path_factory.mktemp("reproduce")
    recipe = _recipe(root / "recipes", trio)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        calls = _Calls(mp)
        doc = reproduce(recipe, out, tasks=TASKS, data_dir=str(fixture_data), paper_size="1.5B", **FAST)
        first = (list(calls.merges), list(calls.scores))
        calls.clear()
        # A rerun, and the subtracting recipe (λ = −1) on the same folder: ±1 are already merged and scored.
        again = reproduce(recipe, out, tasks=TASKS, data_dir=str(fixture_data), paper_size="1.5B", **FAST)
        sub = reproduce(
            _recipe(root / "recipes", trio, "qwen1.5b_sub.yml"),
            out,
            tasks=TASKS,
            data_dir=str(fixture_data),
            paper_size="1.5B",
            **FAST,
        )
        rerun = (list(calls.merges), list(calls.scores))
    return dict(out=out, doc=doc, first=first, rerun=rerun, again=again, sub=sub, recipe=recipe)


def test_merges_plus_and_minus_in_one_pass_and_scores_three_models_under_both_conditions(reproduced, trio):
    (merges, scores), doc = reproduced["first"], reproduced["doc"]
    assert merges == [[1.0, -1.0]]
    assert {label: m["ref"] for label, m in doc["models"].items()} == {
        "base": str(trio["target"]),
        "+v": str(reproduced["out"] / "merges" / "lambda=1"),
        "-v": str(reproduced["out"] / "merges" / "lambda=-1"),
        "G+T": str(trio["grpo"]),  # the paper's reference row: the GRPO donor with the think prompt
    }
    assert len({m["sha256"] for m in doc["models"].values()}) == 4
    # One lm-eval run per model and condition (the donor: think only); the think runs carry the instruction.
    assert len(scores) == 7 and sum(1 for s in scores if s[1]) == 4
    assert [s[1] for s in scores if s[0] == str(trio["grpo"])] == ["Think step by step, then give the final answer."]
    assert all(
        set(s[2]) == {"mkr_gsm8k_cot", "mkr_gsm8k_cot_adv", "mkr_sciq", "mkr_bbh_cot_fewshot_navigate"} for s in scores
    )
    units = {(s["label"], s["condition"], s["task"], s["variant"]) for s in doc["scores"]}
    for label in ("base", "+v", "-v", "G+T"):
        for cond in ("plain", "think"):
            for task, variant in (
                ("gsm8k_cot", "plain"),
                ("gsm8k_cot", "adversarial"),
                ("sciq", "plain"),
                ("bbh_navigate", "plain"),
            ):
                assert ((label, cond, task, variant) in units) == (label != "G+T" or cond == "think")
    settings = doc["settings"]
    assert settings["baseline"] == "base" and settings["adversarial"] is True
    assert settings["model_conditions"] == {"G+T": ["think"]}
    assert settings["reproduce"]["lambda"] == 1.0 and settings["reproduce"]["merge_dtype"] == "bfloat16"
    summary, abstract = "Papers Explained 488: Reasoning Vectors, 2025-11-07", "arXiv:2509.01363 abstract"
    assert settings["reproduce"]["donor"] == "G+T"
    assert settings["reproduce"]["paper"] == {
        "source": "arXiv:2509.01363",
        "size": "1.5B",
        "target": "Qwen/Qwen2.5-1.5B-Instruct",
        "figures": [
            {"direction": "+v", "dataset": "gsm8k", "prompt": "plain", "delta": 2.6, "source": summary},
            {"direction": "+v", "dataset": "humaneval", "prompt": "plain", "delta": 2.2, "source": summary},
            {"direction": "+v", "dataset": "bbh", "prompt": "plain", "delta": 12.3, "source": summary},
            {"direction": "+v", "dataset": "gsm8k", "prompt": "think", "delta": 4.9, "source": summary},
            {"direction": "+v", "dataset": "humaneval", "prompt": "think", "delta": 4.3, "source": summary},
            {"direction": "+v", "dataset": "bbh", "prompt": "think", "delta": 12.3, "source": summary},
            {"direction": "+v", "dataset": "sciq", "prompt": None, "delta": 1.7, "source": abstract},
            {"direction": "-v", "dataset": "gsm8k", "prompt": None, "delta": -11.8, "source": abstract},
        ],
    }


def test_plus_and_minus_are_the_target_plus_and_minus_the_vector(reproduced, trio):
    """Against an independent float64 reference, rounded once to bf16 (within one bf16 step)."""
    import torch
    from safetensors.torch import load_file

    target, grpo, sft = (load_file(trio[r] / "model.safetensors") for r in ("target", "grpo", "sft"))
    merges = reproduced["out"] / "merges"
    for lam, folder in ((1.0, "lambda=1"), (-1.0, "lambda=-1")):
        merged = load_file(merges / folder / "model.safetensors")
        assert set(merged) == set(target)
        for name, tensor in merged.items():
            ref = (target[name].double() + lam * (grpo[name].double() - sft[name].double())).to(torch.bfloat16)
            torch.testing.assert_close(tensor, ref, rtol=2**-7, atol=0)
        assert not torch.equal(merged["model.layers.0.mlp.up_proj.weight"], target["model.layers.0.mlp.up_proj.weight"])


HEAD = (
    "| task | variant | condition | n | base | +v | Δ +v | Δ +v vs plain base | paper Δ +v "
    "| -v | Δ -v | Δ -v vs plain base | paper Δ -v | G+T | Δ G+T vs plain base | source |"
)


def test_table_sets_the_paper_beside_the_measured_deltas(reproduced):
    table = (reproduced["out"] / "table.md").read_text()
    lines = table.splitlines()
    assert lines[0] == "# Reproduction of arXiv:2509.01363"
    assert "## Against the paper (arXiv:2509.01363, Qwen2.5-1.5B)" in lines
    assert HEAD in lines
    row = next(line for line in lines if line.startswith("| gsm8k_cot | plain | plain |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Plain prompt: the summary's +Vector figure; the abstract's −11.8 with its condition unstated (*).
    assert cells[8] == "+2.6" and cells[12] == "-11.8*" and cells[15] == "[S], [A]"
    assert cells[6].startswith(("+", "-")) and cells[10].startswith(("+", "-"))  # our Δ, in points
    assert cells[7] == cells[6] and cells[11] == cells[10]  # under the plain prompt both Δ agree
    assert cells[13] == cells[14] == "–"  # the donor is scored with the think prompt only
    think = [
        c.strip()
        for c in next(line for line in lines if line.startswith("| gsm8k_cot | plain | think |")).strip("|").split("|")
    ]
    assert think[8] == "+4.9" and think[12] == "-11.8*"  # +Vector+Think: where +4.9 belongs
    assert think[13] != "–" and think[14].startswith(("+", "-"))  # G+T, against base under the plain prompt
    sciq = next(line for line in lines if line.startswith("| sciq | plain | plain |"))
    cells = [c.strip() for c in sciq.strip("|").split("|")]
    assert cells[8] == "+1.7*" and cells[12] == "—" and cells[15] == "[A]"
    # The paper gives no figure for distractors, or for one BBH subtask alone.
    for prefix in (
        "| gsm8k_cot | adversarial | plain |",
        "| gsm8k_cot | adversarial | think |",
        "| bbh_navigate | plain | plain |",
        "| bbh_navigate | plain | think |",
    ):
        cells = [c.strip() for c in next(line for line in lines if line.startswith(prefix)).strip("|").split("|")]
        assert cells[8] == cells[12] == cells[15] == "—" and cells[6] != "—", cells
    assert "Sources: [S] Papers Explained 488: Reasoning Vectors, 2025-11-07; [A] arXiv:2509.01363 abstract." in table
    # Then every score, as bench writes it, with the split each came from.
    assert "## Every score" in lines
    assert "Data: GSM8K: test (local); SciQ: validation (local); BBH: test (local); limit: 1." in table
    assert "| bbh_navigate | plain | exact_match (get-answer) | think |" in table


def test_every_delta_of_the_table_is_paired_including_those_against_the_plain_prompt(reproduced):
    doc = reproduced["doc"]
    pairs = {(c["label"], c["condition"], c["baseline_condition"]) for c in doc["comparisons"]}
    for label in ("+v", "-v"):
        assert {(label, "plain", "plain"), (label, "think", "think"), (label, "think", "plain")} <= pairs
    assert ("G+T", "think", "plain") in pairs and not any(p[0] == "G+T" and p[1] == "plain" for p in pairs)
    lines = (reproduced["out"] / "table.md").read_text().splitlines()
    think = next(line for line in lines if line.startswith("| gsm8k_cot | plain | think |"))
    cells = [c.strip() for c in think.strip("|").split("|")]
    assert all("[" in cells[i] and "]" in cells[i] for i in (6, 7, 10, 11, 14))  # every Δ with its interval
    assert any(line.startswith("Δ [low, high]: Δ in points against `base`") for line in lines)
    assert "| gsm8k_cot | plain | exact_match (strict-match) | think | +v | base (plain) |" in "\n".join(lines)


def test_a_rerun_and_the_subtracting_recipe_reuse_every_merge_and_score(reproduced):
    assert reproduced["rerun"] == ([], [])
    assert reproduced["again"]["scores"] == reproduced["doc"]["scores"]
    assert reproduced["sub"]["scores"] == reproduced["doc"]["scores"]


def _document(values, size_tasks=("gsm8k_cot", "humaneval", "sciq", "bbh")):
    """A results document with one headline score per (label, task, condition) from `values`."""
    from mergekit_reasoning.bench.report import PRIMARY

    scores = []
    for (label, task, cond, variant), value in values.items():
        metric, filt = PRIMARY[task]
        scores.append(
            {
                "label": label,
                "condition": cond,
                "task": task,
                "variant": variant,
                "subtask": None,
                "n": 10,
                "metric": metric,
                "filter": filt,
                "value": value,
                "stderr": 0.01,
            }
        )
    labels = dict.fromkeys(label for label, *_ in values)
    return {"settings": {"baseline": "base"}, "models": {label: {} for label in labels}, "scores": scores}


def _rows(markdown):
    return {
        tuple(c.strip() for c in line.strip("|").split("|"))[:3]: [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| ") and not line.startswith("| task")
    }


def test_comparison_layout_with_known_values():
    values = {}
    for task, base, plus, minus in (
        ("gsm8k_cot", 0.50, 0.55, 0.40),
        ("humaneval", 0.30, 0.32, 0.30),
        ("sciq", 0.90, 0.905, 0.88),
        ("bbh", 0.20, 0.35, 0.10),
    ):
        # Under the think prompt every model scores 2 points more, and the donor 1 point below +v.
        for cond, bump in (("plain", 0.0), ("think", 0.02)):
            values.update(
                {
                    ("base", task, cond, "plain"): base + bump,
                    ("+v", task, cond, "plain"): plus + bump,
                    ("-v", task, cond, "plain"): minus + bump,
                }
            )
        values[("G+T", task, "think", "plain")] = plus + 0.01
    values.update(
        {
            ("base", "gsm8k_cot", "plain", "adversarial"): 0.4,
            ("+v", "gsm8k_cot", "plain", "adversarial"): 0.5,
            ("-v", "gsm8k_cot", "plain", "adversarial"): 0.1,
        }
    )
    text = comparison_markdown(_document(values), "1.5B", {"+v": "+v", "-v": "-v"}, donor="G+T")
    rows = _rows(text)
    assert HEAD in text.splitlines()
    # columns: n, base, +v, Δ +v, Δ +v vs plain base, paper, -v, Δ -v, Δ -v vs plain base, paper, G+T, Δ G+T, source
    assert rows[("gsm8k_cot", "plain", "plain")] == [
        "gsm8k_cot",
        "plain",
        "plain",
        "10",
        "50.0 ± 1.0",
        "55.0 ± 1.0",
        "+5.0",
        "+5.0",
        "+2.6",
        "40.0 ± 1.0",
        "-10.0",
        "-10.0",
        "-11.8*",
        "–",
        "–",
        "[S], [A]",
    ]
    # Think rows: Δ against base under the same prompt, then against base under the plain prompt (the paper's way).
    assert rows[("gsm8k_cot", "plain", "think")] == [
        "gsm8k_cot",
        "plain",
        "think",
        "10",
        "52.0 ± 1.0",
        "57.0 ± 1.0",
        "+5.0",
        "+7.0",
        "+4.9",
        "42.0 ± 1.0",
        "-10.0",
        "-8.0",
        "-11.8*",
        "56.0 ± 1.0",
        "+6.0",
        "[S], [A]",
    ]
    assert rows[("humaneval", "plain", "plain")][6:] == [
        "+2.0",
        "+2.0",
        "+2.2",
        "30.0 ± 1.0",
        "+0.0",
        "+0.0",
        "—",
        "–",
        "–",
        "[S]",
    ]
    assert rows[("humaneval", "plain", "think")][6:9] == ["+2.0", "+4.0", "+4.3"]
    assert rows[("sciq", "plain", "plain")][6:] == [
        "+0.5",
        "+0.5",
        "+1.7*",
        "88.0 ± 1.0",
        "-2.0",
        "-2.0",
        "—",
        "–",
        "–",
        "[A]",
    ]
    assert rows[("sciq", "plain", "think")][8] == "+1.7*"  # condition not stated: beside both prompts
    assert rows[("bbh", "plain", "plain")][6:9] == ["+15.0", "+15.0", "+12.3"]
    assert rows[("bbh", "plain", "think")][6:9] == ["+15.0", "+17.0", "+12.3"]
    assert rows[("gsm8k_cot", "adversarial", "plain")][6:] == [
        "+10.0",
        "+10.0",
        "—",
        "10.0 ± 1.0",
        "-30.0",
        "-30.0",
        "—",
        "–",
        "–",
        "—",
    ]
    # 7B: one figure, GSM8K +5.0 with the vector and the think prompt; nothing under the plain prompt.
    rows = _rows(
        comparison_markdown(
            _document(values),
            "7B",
            {"+v": "+v", "-v": "-v"},
            donor="G+T",
            target="allenai/OLMo-2-1124-7B@7df9a82518afdecae4e8c026b27adccc8c1f0032",
        )
    )
    assert rows[("gsm8k_cot", "plain", "think")][8] == "+5.0" and rows[("gsm8k_cot", "plain", "think")][12] == "—"
    assert all(r[8] == r[12] == "—" for key, r in rows.items() if key != ("gsm8k_cot", "plain", "think"))
    text = comparison_markdown(_document(values), "7B", {"+v": "+v", "-v": "-v"}, target="allenai/OLMo-2-1124-7B")
    assert (
        "The paper's figures are for the target Qwen/Qwen2.5-7B-Instruct; this recipe's target is "
        "allenai/OLMo-2-1124-7B."
    ) in text
    assert "this recipe's target" not in comparison_markdown(
        _document(values),
        "7B",
        {"+v": "+v", "-v": "-v"},
        target="Qwen/Qwen2.5-7B-Instruct@a09a35458c702b33eeacc393d103063234e8bc28",
    )
    # A size the paper gives no figures for: the measured columns stay, every paper cell is —.
    for size in (None, "13B"):
        text = comparison_markdown(_document(values), size, {"+v": "+v", "-v": "-v"})
        assert "no figures for this model size" in text and "Sources:" not in text
        assert all(r[8] == "—" and r[12] == "—" for r in _rows(text).values())


def test_model_size_is_read_from_the_target_name():
    assert size_of("Qwen/Qwen2.5-1.5B-Instruct") == "1.5B"
    assert size_of("Qwen/Qwen2.5-7B-Instruct@0123abc") == "7B"
    assert size_of("/models/qwen2.5-1.5b-instruct/") == "1.5B"
    assert size_of("/tmp/pytest-1/trio0/target") is None


def test_engine_options_pass_through_to_run_bench(trio, tmp_path, monkeypatch):
    """Whatever run_bench accepts (engine, dtype, parallel sizes ...) reaches it unchanged;
    the merge keeps the recipe's dtype."""
    from mergekit_reasoning.bench import reproduce as module
    from mergekit_reasoning.bench import runner, sweep
    from mergekit_reasoning.bench.conditions import Condition

    seen = {}

    def merge_lambdas(recipe, lams, out_root):
        seen["merge"] = (lams, recipe.data["dtype"])
        return {lam: out_root / f"lambda={lam:g}" for lam in lams}

    def run_bench(models, tasks, **kwargs):
        seen["bench"], seen["models"] = kwargs, models
        kwargs["out_dir"].mkdir(parents=True, exist_ok=True)
        (kwargs["out_dir"] / "table.md").write_text("# Benchmark results\n")
        return {"settings": {"baseline": "base"}, "models": models, "scores": []}

    monkeypatch.setattr(sweep, "merge_lambdas", merge_lambdas)
    monkeypatch.setattr(runner, "run_bench", run_bench)
    recipe = _recipe(tmp_path / "r", trio, parameters={"lambda": -0.5})
    module.reproduce(
        recipe,
        tmp_path / "o",
        tasks="sciq",
        engine="vllm",
        dtype="float16",
        tensor_parallel_size=2,
        limit=3,
        device="cuda:1",
    )
    assert seen["merge"] == ([0.5, -0.5], "bfloat16")
    got = seen["bench"]
    assert {k: got[k] for k in ("engine", "dtype", "tensor_parallel_size", "limit", "device")} == {
        "engine": "vllm",
        "dtype": "float16",
        "tensor_parallel_size": 2,
        "limit": 3,
        "device": "cuda:1",
    }
    assert got["conditions"] == "plain,think" and got["adversarial"] is True and got["baseline"] == "base"
    assert seen["models"]["G+T"] == str(trio["grpo"]) and got["model_conditions"] == {"G+T": [Condition("think")]}
    assert (tmp_path / "o" / "table.md").read_text().startswith("# Reproduction of arXiv:2509.01363")
    # --no-donor (donor=False), or no think prompt among the conditions: no G+T row.
    for kwargs in (dict(donor=False), dict(conditions="plain")):
        module.reproduce(recipe, tmp_path / "o", tasks="sciq", **kwargs)
        assert "G+T" not in seen["models"] and "model_conditions" not in seen["bench"]


@pytest.mark.parametrize(
    "recipe_changes, args, message",
    [
        (None, [], "nope.yml: No such file or directory"),
        ({"merge_method": "linear"}, [], "merge_method is 'linear', expected 'reasoning_vector'"),
        ({"parameters": {"lambda": 0}}, [], "lambda must be a nonzero number"),
        ({"parameters": {"lambda": [0.0, 1.0]}}, [], "lambda must be a nonzero number"),
        ({"out_dtype": "float32"}, [], "set dtype, and out_dtype equal to it"),
        ({"dtype": None}, [], "set dtype, and out_dtype equal to it"),
        ({"tokenizer_source": "base"}, [], "`tokenizer_source` is not supported here"),
        ({"models": "VECTOR"}, [], "has role 'vector'"),
        ({"models": "TWO_GRPO"}, [], "two models have role grpo"),
        ({"models": "DONOR_LAMBDA"}, [], "`lambda` is not supported here"),
        ({}, ["--tasks", "sciq,mmlu"], "unknown task 'mmlu'"),
        ({}, ["--tasks", "bbh,bbh_navigate"], "bbh_navigate is part of bbh"),
        ({}, ["--paper-size", "13B"], "the paper reports no figures for model size '13B'"),
        ({}, ["--batch-size", "big"], "--batch-size expects a number or 'auto'"),
        ({}, ["--data-dir", "EMPTY"], "missing data file:"),
    ],
)
def test_bad_input_is_one_clear_line_before_anything_is_merged(
    recipe_changes, args, message, trio, fixture_data, tmp_path
):
    if recipe_changes is None:
        recipe = tmp_path / "nope.yml"
    else:
        models = recipe_changes.get("models")
        if models == "VECTOR":
            recipe_changes["models"] = [{"model": str(trio["grpo"]), "parameters": {"role": "vector"}}]
        elif models == "TWO_GRPO":
            recipe_changes["models"] = [
                {"model": str(trio[r]), "parameters": {"role": "grpo"}} for r in ("grpo", "sft")
            ]
        elif models == "DONOR_LAMBDA":
            recipe_changes["models"] = [
                {"model": str(trio[r]), "parameters": {"role": r, "lambda": 1.0}} for r in ("grpo", "sft")
            ]
        recipe = _recipe(tmp_path / "recipes", trio, **recipe_changes)
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in args]
    if "--data-dir" not in args:
        args += ["--data-dir", str(fixture_data)]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["reproduce", str(recipe), "--out", str(out), "--limit", "1", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_reproduce_is_a_command_with_help():
    result = CliRunner().invoke(main, ["reproduce", "--help"])
    assert result.exit_code == 0 and "--paper-size" in result.output and "think" in result.output
    assert "--no-donor" in result.output and "G+T" in result.output


def test_python_callers_get_one_package_error(tmp_path):
    from mergekit_reasoning.bench.reproduce import reproduce

    with pytest.raises(RecipeError, match="No such file"):
        reproduce(tmp_path / "missing.yml", tmp_path / "out")
    with pytest.raises(RecipeError, match="Is a directory"):
        reproduce(tmp_path, tmp_path / "out")
    binary = tmp_path / "binary.yml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(RecipeError, match="not a UTF-8 text file"):
        reproduce(binary, tmp_path / "out")
    nested = tmp_path / "nested.yml"
    nested.write_text("a: &a [*a]\n")  # a self-referencing YAML alias
    with pytest.raises(RecipeError, match="nested.yml"):
        reproduce(nested, tmp_path / "out")
    assert not (tmp_path / "out").exists()
