"""Regeneration: re-merge exactly what changed, skip the rest, fail loudly."""

import subprocess
import sys

import pytest
import yaml
from conftest import recipe_dict

from mergekit_reasoning.testing.standins import write_trio


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEKIT_REASONING_CACHE", str(tmp_path / "hash-cache"))
    models = write_trio(tmp_path / "models")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name, lam in (("add", 1.0), ("sub", -1.0)):
        recipe = recipe_dict(models["target"], models["grpo"], models["sft"], lam)
        (recipes / f"{name}.yml").write_text(yaml.safe_dump(recipe))
    return models, recipes, tmp_path / "merged"


def regenerate(recipes, out):
    # A fresh process each time, as CI runs it.
    return subprocess.run(
        [sys.executable, "-m", "mergekit_reasoning.cli", "regenerate", str(recipes), "--out", str(out)],
        capture_output=True,
        text=True,
    )


def verify(folder):
    # In this process: verify reads only the folder's own files, so nothing cached can go stale.
    from click.testing import CliRunner

    from mergekit_reasoning.cli import main

    return CliRunner().invoke(main, ["verify", str(folder)])


def status(done):
    return sorted(line.split()[0] + " " + line.split()[1] for line in done.stdout.splitlines() if ":" in line)


def test_regenerates_only_what_changed(setup):
    models, recipes, out = setup
    first = regenerate(recipes, out)
    assert first.returncode == 0, first.stderr
    assert status(first) == ["merged add.yml:", "merged sub.yml:"]
    assert verify(out / "add").exit_code == 0 and verify(out / "sub").exit_code == 0
    add_manifest = (out / "add" / "reasoning_merge.json").read_text()

    again = regenerate(recipes, out)
    assert status(again) == ["unchanged add.yml:", "unchanged sub.yml:"]
    assert (out / "add" / "reasoning_merge.json").read_text() == add_manifest  # untouched

    recipe = yaml.safe_load((recipes / "sub.yml").read_text())
    recipe["parameters"]["lambda"] = -0.5
    (recipes / "sub.yml").write_text(yaml.safe_dump(recipe))
    assert status(regenerate(recipes, out)) == ["merged sub.yml:", "unchanged add.yml:"]

    shard = out / "add" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")  # an edited output is stale too
    assert status(regenerate(recipes, out)) == ["merged add.yml:", "unchanged sub.yml:"]


def test_a_changed_input_remerges_the_recipes_that_read_it(setup):
    models, recipes, out = setup
    assert regenerate(recipes, out).returncode == 0
    config = models["sft"] / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert status(regenerate(recipes, out)) == ["merged add.yml:", "merged sub.yml:"]


def test_a_failing_recipe_fails_the_run_but_not_the_others(setup):
    models, recipes, out = setup
    broken = recipe_dict(models["target"], models["grpo"], models["grpo"])
    (recipes / "broken.yml").write_text(yaml.safe_dump(broken))
    done = regenerate(recipes, out)
    assert done.returncode == 1
    assert status(done) == ["failed broken.yml:", "merged add.yml:", "merged sub.yml:"]
    assert "1 failed" in done.stdout
    assert not (out / "broken").exists()
