"""`mergekit-reasoning` verbs: results, and one-line errors for every bad input."""

import json

import pytest
import yaml
from click.testing import CliRunner
from conftest import recipe_dict

from mergekit_reasoning.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write(tmp_path, recipe, name="recipe.yml"):
    path = tmp_path / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return path


def assert_one_line_error(result, expected):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert expected in lines[0]


def test_check_describes_a_good_recipe(trio, tmp_path):
    result = invoke("check", write(tmp_path, recipe_dict(trio["target"], trio["grpo"], trio["sft"], -1)))
    assert result.exit_code == 0, result.output
    assert f"vector 'reasoning': λ=-1 × ({trio['grpo']} − {trio['sft']})" in result.output


def bad_recipes(trio, untied_trio):
    t, g, s = (str(trio[k]) for k in ("target", "grpo", "sft"))
    base = recipe_dict(t, g, s)
    no_role = recipe_dict(t, g, s)
    del no_role["models"][1]["parameters"]["role"]
    unknown = recipe_dict(t, g, s)
    unknown["models"][1]["parameters"]["role"] = "rl"
    doubled = recipe_dict(t, g, s)
    doubled["models"][1]["parameters"]["role"] = "grpo"
    no_target = dict(base)
    del no_target["base_model"]
    return [
        ("missing role", no_role, f"model {s} has no role"),
        ("unknown role", unknown, f"model {s} has unknown role 'rl'"),
        ("doubled role", doubled, f"vector 'reasoning' has 2 grpo models ({g}, {s})"),
        ("no target", no_target, "base_model (the target) is missing"),
        ("other method", dict(base, merge_method="linear"), "merge_method is 'linear'"),
        ("missing model", recipe_dict(t, g, "/nonexistent/sft"), "model /nonexistent/sft"),
        ("not yaml", "models: [unclosed", "not valid YAML"),
    ]


@pytest.mark.parametrize("verb", ["check", "merge"])
def test_bad_recipes_give_one_line_errors(verb, trio, untied_trio, tmp_path):
    for label, recipe, expected in bad_recipes(trio, untied_trio):
        args = [verb, write(tmp_path, recipe, f"{label.replace(' ', '_')}.yml")]
        if verb == "merge":
            args.append(tmp_path / f"out-{label.replace(' ', '_')}")
        result = invoke(*args)
        assert_one_line_error(result, expected)
        if verb == "merge":
            assert not args[-1].exists(), label


def test_missing_recipe_file(tmp_path):
    assert_one_line_error(invoke("check", tmp_path / "nope.yml"), "nope.yml: No such file or directory")


def test_incompatible_models(trio, make_model, tmp_path):
    other = make_model("hidden128", like_seed=None)
    config = json.loads((other / "config.json").read_text())
    config["hidden_size"] = 128
    (other / "config.json").write_text(json.dumps(config))
    result = invoke("check", write(tmp_path, recipe_dict(trio["target"], other, trio["sft"])))
    assert_one_line_error(result, f"model {other}: hidden_size is 128, but the target {trio['target']} has 64")


def test_demo_runs_the_add_recipe_offline(tmp_path):
    result = invoke("demo", "--workdir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "max error 0.50 ulp of bfloat16" in result.output or "max error 0.00 ulp" in result.output
    assert "tied output: True (lm_head.weight stored: False)" in result.output
    assert (tmp_path / "merged" / "config.json").exists()


def _run_with(monkeypatch, outcome):
    """Call the console script's `run` with `main` replaced by `outcome`; return how it exited."""
    import atexit
    import os

    from mergekit_reasoning import cli

    calls = []

    class Exited(Exception):
        pass

    def fake_exit(code):
        calls.append(("os._exit", code))
        raise Exited

    monkeypatch.setattr(cli, "main", outcome)
    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: calls.append(("atexit",)))
    try:
        cli.run()
    except Exited:
        pass
    except SystemExit as done:
        calls.append(("sys.exit", done.code))
    return calls


@pytest.mark.parametrize(
    "raised, code", [(None, 0), (SystemExit(0), 0), (SystemExit(2), 2), (SystemExit("Error: x"), 1)]
)
def test_the_console_script_runs_exit_handlers_then_exits_at_once(raised, code, monkeypatch, capsys):
    def outcome():
        if raised is not None:
            raise raised

    import threading

    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])  # whatever else the runner has
    assert _run_with(monkeypatch, outcome) == [("atexit",), ("os._exit", code)]
    if isinstance(raised, SystemExit) and isinstance(raised.code, str):
        assert capsys.readouterr().err.strip() == "Error: x"


def test_the_console_script_waits_for_a_thread_left_running(monkeypatch):
    import threading

    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert _run_with(monkeypatch, lambda: None) == [("sys.exit", 0)]
    finally:
        release.set()
        worker.join()


def test_the_console_script_flushes_piped_output(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mergekit_reasoning.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "merge" in done.stdout and done.stdout.endswith("\n")
    done = subprocess.run(
        [sys.executable, "-m", "mergekit_reasoning.cli", "check", str(tmp_path / "none.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("Error: recipe")
