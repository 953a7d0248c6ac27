"""Crashes, hangs, leftovers and untrue lines: each bad input or fault ends in one true line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import recipe_dict

from mergekit_reasoning.core.staging import leftovers

from .conftest import invoke, one_line_error, write_recipe

MERGE = [sys.executable, "-m", "mergekit_reasoning.cli", "merge"]

# --- recipes and configs are bounded before validation ------------------------------------

BOMB = """merge_method: reasoning_vector
base_model: {target}
models:
  - model: {grpo}
    parameters: {{role: grpo}}
  - model: {sft}
    parameters: {{role: sft}}
a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
parameters: {{lambda: *h}}
"""


@pytest.mark.parametrize(
    "text, expected",
    [
        (BOMB, "aliases are expanded"),
        ("merge_method: reasoning_vector\nx: " + "[" * 200 + "]" * 200 + "\n", "nested deeper"),
        ("merge_method: reasoning_vector\nx: &x [*x]\n", "refers to itself"),
        ("merge_method: reasoning_vector\n# " + "x" * (2 << 20) + "\n", "larger than"),
    ],
    ids=["alias-bomb", "deep", "self-reference", "huge"],
)
def test_hostile_yaml_is_refused_at_once(trio, tmp_path, text, expected):
    recipe = write_recipe(tmp_path, text.format(**{k: str(v) for k, v in trio.items()}))
    start = time.monotonic()
    for verb in ("check", "merge"):
        args = (verb, recipe) if verb == "check" else (verb, recipe, tmp_path / "out")
        one_line_error(invoke(*args), expected)
    assert time.monotonic() - start < 5  # well under a second each, parsing included


def test_a_config_claiming_absurd_layers_is_refused_at_once(copy_model, trio, tmp_path):
    sft = copy_model(trio["sft"], "sft")
    config = json.loads((sft / "config.json").read_text())
    config["num_hidden_layers"] = 10**8
    (sft / "config.json").write_text(json.dumps(config))
    start = time.monotonic()
    one_line_error(
        invoke("check", write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], sft))),
        "claims 100000000 layers",
    )
    assert time.monotonic() - start < 5


# --- killed runs: the next run, or `clean`, removes what dead processes left ---------------


def _killed_merge(recipe, out, sig):
    run = subprocess.Popen(MERGE + [str(recipe), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is writing
        if any(p.name.startswith(f".{out.name}.partial-") for p in out.parent.iterdir()):
            break
        time.sleep(0.02)
    run.send_signal(sig)
    run.communicate(timeout=120)
    return run.returncode


@pytest.fixture
def big_recipe(qwen_trio, tmp_path):
    """Models large enough (Qwen2.5-1.5B's widths) that a merge is still running when signalled."""
    return write_recipe(tmp_path, recipe_dict(qwen_trio["target"], qwen_trio["grpo"], qwen_trio["sft"]))


def test_sigterm_cleans_up_like_ctrl_c(big_recipe, tmp_path):
    out = tmp_path / "out"
    code = _killed_merge(big_recipe, out, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run_and_by_clean(big_recipe, tmp_path):
    out = tmp_path / "out"
    assert _killed_merge(big_recipe, out, signal.SIGKILL) == -signal.SIGKILL
    left = leftovers(tmp_path, "out")
    assert left, "a SIGKILLed merge leaves its staging folder"
    result = invoke("clean", tmp_path)
    assert result.exit_code == 0 and all(str(path) in result.output for path, _ in left)
    assert not leftovers(tmp_path)
    # again, and this time the next merge itself removes them
    assert _killed_merge(big_recipe, out, signal.SIGKILL) == -signal.SIGKILL
    assert leftovers(tmp_path, "out")
    assert invoke("merge", big_recipe, out).exit_code == 0
    assert not leftovers(tmp_path) and (out / "reasoning_merge.json").is_file()


def test_clean_spares_a_live_process_and_restores_an_interrupted_swap(tmp_path):
    live = tmp_path / f".out.partial-{os.getpid()}-abcd"
    live.mkdir()
    dead_pid = 4194303  # above the usual pid_max: not running
    old = tmp_path / f".out.old-{dead_pid}"
    old.mkdir()
    (old / "model.safetensors").write_text("the previous output")
    assert invoke("clean", tmp_path).exit_code == 0
    assert live.is_dir()  # ours, still running
    assert (tmp_path / "out" / "model.safetensors").read_text() == "the previous output"


# --- local folders work offline on every path ----------------------------------------------


def test_a_two_part_relative_path_merges_offline(trio, tmp_path):
    import shutil

    work = tmp_path / "work"
    (work / "m").mkdir(parents=True)
    for role in ("target", "grpo", "sft"):
        shutil.copytree(trio[role], work / "m" / role)
    write_recipe(work, recipe_dict("m/target", "m/grpo", "m/sft"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(MERGE + ["recipe.yml", "out"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert (work / "out" / "README.md").is_file() and (work / "out" / "reasoning_merge.json").is_file()


# --- regenerate goes on past any one recipe -------------------------------------------------


def test_regenerate_goes_on_past_bad_recipes(trio, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "a_latin1.yml").write_bytes("merge_method: reasoning_vector # café\n".encode("latin-1"))
    write_recipe(recipes, recipe_dict(trio["target"], trio["grpo"], trio["sft"], "abc"), "b_text_lambda.yml")
    write_recipe(recipes, recipe_dict(trio["target"], trio["grpo"], trio["sft"]), "c_good.yml")
    result = invoke("regenerate", recipes, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "failed    a_latin1.yml" in result.output and "UTF-8" in result.output
    assert "failed    b_text_lambda.yml" in result.output and "lambda" in result.output
    assert "merged    c_good.yml" in result.output and "1 merged, 0 unchanged, 2 failed" in result.output


# --- one line where a traceback was ---------------------------------------------------------


def test_outputs_the_file_system_refuses_are_one_line(trio, tmp_path):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    one_line_error(invoke("merge", recipe, a_file), "is a file")
    one_line_error(invoke("merge", recipe, a_file / "out"), "is a file")
    one_line_error(invoke("merge", recipe, tmp_path / ("x" * 250)), "too long")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(invoke("merge", recipe, locked / "out"), "cannot write")


@pytest.mark.parametrize("size", ["lots", "-5B", "0", "5Q"])
def test_a_bad_shard_size_is_one_line(trio, tmp_path, size):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    one_line_error(invoke("merge", recipe, tmp_path / "out", "--out-shard-size", size), "--out-shard-size")
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_is_one_line(trio, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    one_line_error(invoke("merge", recipe, tmp_path / "out", "--cuda"), "no CUDA device")
    assert not (tmp_path / "out").exists()


# --- untrue lines made true ----------------------------------------------------------------


@pytest.mark.parametrize("ref", ["/no/such/model", "./missing", "deep/er/path"])
def test_a_missing_local_folder_says_so(trio, tmp_path, ref):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], ref))
    line = one_line_error(invoke("check", recipe), f"model {ref}: no such folder")
    assert "Repo id" not in line


def test_extract_says_it_keeps_an_untied_head(trio, untied_trio, tmp_path):
    result = invoke("extract", "--grpo", untied_trio["grpo"], "--sft", trio["sft"], tmp_path / "v")
    assert result.exit_code == 0, result.output
    assert "is dropped" not in result.output and "the vector keeps it" in result.output
    assert "lm_head.weight" in json.loads((tmp_path / "v" / "reasoning_vector.json").read_text())["tensors"]


def test_inspect_names_the_file_it_wrote(trio, tmp_path):
    assert invoke("extract", "--grpo", trio["grpo"], "--sft", trio["sft"], tmp_path / "v").exit_code == 0
    result = invoke("inspect", tmp_path / "v", "--plot", tmp_path / "figure")
    assert result.exit_code == 0 and f"wrote {tmp_path / 'figure.png'}" in result.output
    assert (tmp_path / "figure.png").is_file()


def test_output_folders_get_the_mode_mkdir_gives(trio, tmp_path):
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    assert invoke("merge", recipe, tmp_path / "out").exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


def test_bench_says_a_model_folder_has_no_tokenizer(make_model, tmp_path):
    from mergekit_reasoning.bench.identity import check_model
    from mergekit_reasoning.core.errors import BenchError

    bare = make_model("bare", tokenizer=False)
    with pytest.raises(BenchError, match="has no tokenizer files"):
        check_model("m", str(bare))


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_a_disk_that_fails_while_metadata_is_written_is_one_line(trio, tmp_path, monkeypatch, code):
    import errno

    from mergekit_reasoning.executor import stream

    def fail(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(stream, "_write_metadata", fail)
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"]))
    one_line_error(
        invoke("merge", recipe, tmp_path / "out", "--quiet"), "cannot write", os.strerror(getattr(errno, code))
    )
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# --- an input truncated while the merge has it mapped --------------------------------------

# Cuts the victim file just short of the end of a tensor the merge's prefetch is about to
# read, when every input is mapped. Two checks stand between that and SIGBUS: the merge's
# per-tensor dtype check (it re-reads a model whose files changed) in the main thread, and
# input_sizes in the prefetch thread, which reads. `only-sizes` disables the first, to see
# the second alone; `bare` disables both, to see that the attack is real.
TRUNCATE_MID_MERGE = """
import os, sys
from mergekit_reasoning.executor import input_sizes, stream
victim, mode = sys.argv[1], sys.argv[2]
calls, load = [0], stream._load
def truncating_load(task, sizes, *rest):
    calls[0] += 1
    if calls[0] == 3:
        (end,) = [end for path, end in sizes._needs[task.tensor_name] if str(path) == victim]
        os.truncate(victim, end - 1)
    return load(task, sizes, *rest)
stream._load = truncating_load
if mode != "shipped":
    stream.refuse_non_float_inputs = lambda name, refs: None
if mode == "bare":
    input_sizes.InputSizes.check = lambda self, output: None
from mergekit_reasoning.cli import run
sys.argv = ["mergekit-reasoning", "merge", *sys.argv[3:]]
run()
"""


@pytest.mark.parametrize("mode", ["shipped", "only-sizes", "bare"])
def test_an_input_truncated_mid_merge_is_one_line_not_sigbus(trio, copy_model, tmp_path, mode):
    sft = copy_model(trio["sft"], "sft")
    recipe = write_recipe(tmp_path, recipe_dict(trio["target"], trio["grpo"], sft))
    victim = (sft / "model.safetensors").resolve()
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", TRUNCATE_MID_MERGE, str(victim), mode, str(recipe), str(out)],
        capture_output=True,
        text=True,
    )
    if mode == "bare":
        assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr[-2000:])
        return
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("Error: ")]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    named = f"input file {victim} was truncated during the merge" if mode == "only-sizes" else str(sft)
    assert named in lines[0], lines[0]
    assert not out.exists() and not leftovers(tmp_path)


# --- stock mergekit-yaml on a malformed safetensors input -----------------------------------


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


def _garble_length(path):
    with open(path, "r+b") as handle:
        handle.write(b"\xff" * 8)


def _garble_json(path):
    with open(path, "r+b") as handle:
        handle.seek(9)
        handle.write(b"!!!!")


@pytest.mark.parametrize("damage", [_truncate, _garble_length, _garble_json], ids=["truncated", "length", "json"])
@pytest.mark.parametrize("role", ["sft", "target"])
def test_stock_mergekit_yaml_names_a_malformed_input_in_one_line(trio, copy_model, tmp_path, damage, role):
    from mergekit_runs import mergekit_yaml

    models = {name: trio[name] for name in ("target", "grpo", "sft")}
    models[role] = copy_model(trio[role], role)
    damage(models[role] / "model.safetensors")
    recipe = recipe_dict(models["target"], models["grpo"], models["sft"])
    done = mergekit_yaml(recipe, tmp_path / "ours", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"Error: model {models[role]}: cannot open its weights: model.safetensors is")
    assert not (tmp_path / "out").exists()
    # another method's run is mergekit's own, untouched: its traceback
    recipe["merge_method"] = "task_arithmetic"
    for entry in recipe["models"]:
        entry["parameters"] = {"weight": 1.0}
    other = mergekit_yaml(recipe, tmp_path / "theirs", tmp_path / "out-ta")
    assert other.returncode == 1 and "Traceback" in other.stderr and "SafetensorError" in other.stderr
