"""Data loss: no command replaces a folder it did not write, an input, or another run's result."""

import os
import subprocess
import sys

import pytest
from conftest import recipe_dict
from helpers import file_hashes

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.staging import staged
from mergekit_reasoning.executor.run import lambda_text, sweep_folders

from .conftest import invoke, one_line_error, write_recipe


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- regenerate replaces only folders it merged ---------------------------------------


@pytest.mark.parametrize("occupant", ["user file", "empty file at the name", "nested user folder"])
def test_regenerate_leaves_a_folder_it_did_not_write(trio, tmp_path, occupant):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, recipe_dict(trio["target"], trio["grpo"], trio["sft"]), "mine.yml")
    out = tmp_path / "out"
    (out).mkdir()
    if occupant == "user file":
        (out / "mine").mkdir()
        (out / "mine" / "thesis.tex").write_text("years of work")
    elif occupant == "empty file at the name":
        (out / "mine").write_text("")
    else:
        (out / "mine" / "deep").mkdir(parents=True)
        (out / "mine" / "deep" / "notes.txt").write_text("keep")
    before = _tree(out)
    result = invoke("regenerate", recipes, "--out", out)
    assert result.exit_code == 1
    assert "failed    mine.yml" in result.output and str(out / "mine") in result.output
    assert _tree(out) == before


def test_regenerate_never_replaces_an_input_named_like_a_recipe(copy_model, trio, tmp_path):
    """A recipe whose stem is an input model's folder under OUT must not replace that input."""
    out = tmp_path / "out"
    out.mkdir()
    target = copy_model(trio["target"])
    target = target.rename(out / "mine")  # the target lives at OUT/mine
    recipes = tmp_path / "recipes"
    write_recipe(recipes, recipe_dict(target, trio["grpo"], trio["sft"]), "mine.yml")
    before = file_hashes(target)
    for _ in range(2):  # a second run would add the vector again
        result = invoke("regenerate", recipes, "--out", out)
        assert result.exit_code == 1
    assert file_hashes(target) == before


# --- an output that is, holds or lies inside an input is refused ----------------------


@pytest.mark.parametrize("where", ["the target", "inside the target", "above the target", "a link to the target"])
def test_merge_refuses_an_output_over_an_input(copy_model, trio, tmp_path, where):
    target = copy_model(trio["target"])
    recipe = write_recipe(tmp_path, recipe_dict(target, trio["grpo"], trio["sft"]))
    out = {
        "the target": target,
        "inside the target": target / "merged",
        "above the target": target.parent,
        "a link to the target": tmp_path / "link",
    }[where]
    if where == "a link to the target":
        out.symlink_to(target, target_is_directory=True)
    before = file_hashes(target)
    line = one_line_error(invoke("merge", recipe, out, "--overwrite"), "input")
    assert str(target) in line or "link" in line
    assert file_hashes(target) == before
    assert not any(".partial-" in p.name or ".reserved-" in p.name for p in target.parent.iterdir())


def test_the_stock_cli_refuses_the_target_as_its_output(copy_model, trio, tmp_path):
    from mergekit_runs import mergekit_yaml

    target = copy_model(trio["target"])
    before = file_hashes(target)
    done = mergekit_yaml(recipe_dict(target, trio["grpo"], trio["sft"]), tmp_path, target)
    assert done.returncode != 0
    assert f"output {target} is the input {target}" in done.stderr
    assert file_hashes(target) == before


def test_densify_and_extract_refuse_their_own_inputs(trio, tmp_path):
    vector = tmp_path / "v"
    assert invoke("extract", "--grpo", trio["grpo"], "--sft", trio["sft"], vector, "--storage", "sparse").exit_code == 0
    before = _tree(vector)
    one_line_error(invoke("densify", vector, vector, "--overwrite"), "is the input")
    one_line_error(invoke("densify", vector, vector / "dense"), "lies inside the input")
    assert _tree(vector) == before
    grpo_before = file_hashes(trio["grpo"])
    one_line_error(
        invoke("extract", "--grpo", trio["grpo"], "--sft", trio["sft"], trio["grpo"], "--overwrite"), "input"
    )
    assert file_hashes(trio["grpo"]) == grpo_before


# --- two runs into one output: the loser fails, the winner's result stays ---------------


def test_a_result_put_in_place_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match="written by another process while this one ran"):
        with staged(out) as staging:
            (staging / "model.safetensors").write_text("mine")
            out.mkdir()  # the other run finished first
            (out / "model.safetensors").write_text("theirs")
    assert (out / "model.safetensors").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_replaced_meanwhile_is_not_replaced_again(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RecipeError, match="written by another process"):
        with staged(out, overwrite=True) as staging:
            (staging / "new").write_text("mine")
            os.rename(out, tmp_path / "gone")
            out.mkdir()
            (out / "new").write_text("theirs")
    assert (out / "new").read_text() == "theirs"


def test_two_merges_started_together_leave_one_result_and_one_error(trio, tmp_path):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mergekit_reasoning.cli", "merge", str(recipe), str(out), "--quiet"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    wrote = [stdout for code, stdout, _ in results if code == 0]
    if codes == [0, 1]:  # they overlapped: exactly one kept its result, the other said so
        loser = next(stderr for code, _, stderr in results if code == 1)
        assert "written by another process" in loser or "is not empty" in loser
    else:  # one finished before the other checked: the second refused the non-empty output
        assert codes == [0, 1], results
    assert len(wrote) == 1 and f"wrote {out}" in wrote[0]
    assert (out / "reasoning_merge.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# --- sweep folders: distinct λ, distinct folders ---------------------------------------


@pytest.mark.parametrize(
    "lambdas",
    [(0.1234567, 0.1234568), (1e-7, 1.0000001e-7), (100000.1, 100000.2), (-0.3333333, -0.33333334)],
)
def test_distinct_lambdas_get_distinct_folders(tmp_path, lambdas):
    folders = sweep_folders(tmp_path, lambdas)
    assert len(set(folders)) == len(lambdas)
    assert [float(lambda_text(lam)) for lam in lambdas] == list(lambdas)


def test_short_lambdas_keep_their_short_names(tmp_path):
    assert [f.name for f in sweep_folders(tmp_path, [-1.0, 0.5, 2.0, 0.1])] == [
        "lambda_-1",
        "lambda_0.5",
        "lambda_2",
        "lambda_0.1",
    ]


def test_a_lambda_given_twice_is_refused(trio, tmp_path):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    one_line_error(invoke("merge", recipe, tmp_path / "out", "--lambda", "0.5", "--lambda", "0.50"), "given twice")
    assert not (tmp_path / "out").exists()
