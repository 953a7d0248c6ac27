"""λ sweep: each λ merged with reasoning_vector and scored; a rerun redoes nothing finished."""

import json

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("matplotlib")

LAMBDAS = [0.0, 0.5, 1.0]


def _spies(monkeypatch):
    from mergekit_reasoning.executor import stream

    from .spies import spy_on_children

    calls = {"merge": [], "score": [], "passes": 0}
    real_merge = stream.merge

    def merge(checked, outs, options, *, lambdas=None, **k):
        calls["merge"].extend(lambdas)
        calls["passes"] += 1
        return real_merge(checked, outs, options, lambdas=lambdas, **k)

    monkeypatch.setattr(stream, "merge", merge)
    calls["score"] = spy_on_children(monkeypatch)  # one job per model scored, in its own process
    return calls


def _sweep(trio, out, data):
    from mergekit_reasoning.bench import run_sweep

    return run_sweep(
        trio["target"],
        trio["sft"],
        trio["grpo"],
        LAMBDAS,
        "sciq",
        out,
        data_dir=str(data),
        limit=2,
        batch_size=4,
        progress=False,
    )


def test_sweep_merges_scores_plots_and_resumes(trio, fixture_data, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    calls = _spies(monkeypatch)
    doc = _sweep(trio, out, fixture_data)
    assert sorted(calls["merge"]) == [0.5, 1.0]  # λ = 0 is the target itself
    assert calls["passes"] == 1  # both read the inputs in one pass
    assert len(calls["score"]) == 3
    assert doc["settings"]["sweep"]["lambdas"] == LAMBDAS
    assert doc["settings"]["baseline"] == "lambda=0"
    assert set(doc["models"]) == {"lambda=0", "lambda=0.5", "lambda=1"}
    assert len({m["sha256"] for m in doc["models"].values()}) == 3
    sciq = [s for s in doc["scores"] if s["metric"] == "acc_norm"]
    assert len(sciq) == 3 and all(s["stderr"] is not None for s in sciq)
    assert (out / "plots" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    merged = out / "merges" / "lambda=0.5"
    assert json.loads((merged / "reasoning_merge.json").read_text())["lambda_override"] == 0.5
    assert "Δ lambda=1" in (out / "table.md").read_text()
    # Each λ's Δ against λ = 0 is paired, item by item (McNemar on SciQ's 0/1 outcomes).
    paired = {(c["label"], c["metric"]): c for c in doc["comparisons"]}
    assert set(paired) == {(f"lambda={lam:g}", m) for lam in (0.5, 1.0) for m in ("acc", "acc_norm")}
    assert all(c["baseline"] == "lambda=0" and c["method"] == "exact McNemar" and c["n"] == 2 for c in paired.values())
    assert (out / "plots" / "deltas.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun finds everything done.
    calls["merge"].clear(), calls["score"].clear()
    calls["passes"] = 0
    again = _sweep(trio, out, fixture_data)
    assert calls == {"merge": [], "score": [], "passes": 0}
    assert again["scores"] == doc["scores"]

    # An interruption: λ=0.5's merge never finished (no manifest) and one finished score was lost.
    (merged / "reasoning_merge.json").unlink()
    next(iter(sorted((out / "cache").glob("*.json")))).unlink()
    resumed = _sweep(trio, out, fixture_data)
    assert calls["merge"] == [0.5]  # only the unfinished merge is redone
    assert len(calls["score"]) == 1  # only the lost unit is scored (the re-merge is bit-identical)
    assert resumed["models"] == doc["models"]
    assert resumed["scores"] == doc["scores"]
    assert json.loads((merged / "reasoning_merge.json").read_text())["lambda_override"] == 0.5


def test_sweep_cli_needs_its_three_models(trio, tmp_path):
    from click.testing import CliRunner

    from mergekit_reasoning.cli import main

    result = CliRunner().invoke(
        main, ["bench", "--sweep", "0,x", "--target", "a", "--sft", "b", "--grpo", "c", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0 and "--sweep expects numbers" in result.output
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--sweep",
            "1",
            "--target",
            str(trio["target"]),
            "--sft",
            str(tmp_path / "nope"),
            "--grpo",
            str(trio["grpo"]),
        ],
    )
    assert result.exit_code != 0 and "cannot load model 'sft'" in result.output
