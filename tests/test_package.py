"""The package's shape: what a user reads in --help, how modules depend, what we borrow from mergekit."""

import ast
from pathlib import Path

import click
import pytest

from mergekit_reasoning.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "mergekit_reasoning"


def _commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        yield f"{prefix}{name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")


@pytest.mark.parametrize("name,command", sorted(_commands(main), key=lambda c: c[0]), ids=lambda c: str(c))
def test_every_option_has_help_text(name, command):
    assert command.help, f"`mergekit-reasoning {name}` has no description"
    missing = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, f"`mergekit-reasoning {name}`: no help text for {', '.join(missing)}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules) -> set:
    """The package's modules that `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "mergekit_reasoning":
                continue
            for alias in node.names:  # `from pkg import module` names a module; else the module itself
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
    return (found & set(modules)) - {_module_name(path)}


def test_modules_depend_one_way():
    """No import circle among the package's modules, not even through imports inside functions.

    A subpackage's `__init__` is not counted as importing its modules, since ours hold docstrings only.
    """
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "tasks" not in p.parts}
    assert "mergekit_reasoning.method.reasoning_vector" in modules and "mergekit_reasoning.cli" in modules
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    graph = {
        name: {dep for dep in deps if not modules[dep].name == "__init__.py" or dep == "mergekit_reasoning"}
        for name, deps in graph.items()
    }
    state = {}

    def visit(name, trail):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycle = trail[trail.index(dep) :] + [dep]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_mergekit_helpers_we_borrow_are_where_we_expect():
    """If a mergekit release moves `_model_out_config`, `_copy_tokenizer` or
    `_copy_tagalong_files`, this names the helper; mergekit_private.py is the one
    place to adapt."""
    from mergekit_reasoning.executor.mergekit_private import helper_problems

    problems = helper_problems()
    assert not problems, "mergekit changed the private helpers mergekit_private.py wraps: " + "; ".join(problems)


def test_a_moved_mergekit_helper_is_one_clear_error(monkeypatch):
    import mergekit.merge

    from mergekit_reasoning.core.errors import RecipeError
    from mergekit_reasoning.executor.mergekit_private import copy_tokenizer, helper_problems

    monkeypatch.delattr(mergekit.merge, "_copy_tokenizer")
    assert helper_problems() == ["mergekit.merge._copy_tokenizer is gone"]
    with pytest.raises(RecipeError, match=r"has no mergekit.merge._copy_tokenizer, .* install a supported mergekit"):
        copy_tokenizer(None, "out", options=None)


def test_no_module_outside_mergekit_private_touches_the_private_helpers():
    from mergekit_reasoning.executor.mergekit_private import HELPERS

    for path in PACKAGE.rglob("*.py"):
        if path.name != "mergekit_private.py":
            text = path.read_text(encoding="utf-8")
            assert not [h for h in HELPERS if h in text], (
                f"{path.relative_to(PACKAGE.parent)} uses a private mergekit helper directly"
            )


def test_the_planner_frames_the_method_reads_still_hold_what_it_reads(trio, tmp_path, monkeypatch):
    """mergekit hands `validate_inputs` models only; the method reads layer ranges and
    parameters from its planners' frames (`MergePlanner.normalize_config`'s `output_slice`,
    mergekit-pytorch's `plan_flat_merge`'s `config`). If a mergekit release renames them,
    this says so: plan-time role checks and slice-aware layer checks would stop."""
    from mergekit.options import MergeOptions
    from mergekit.scripts.merge_raw_pytorch import RawPyTorchMergeConfig, plan_flat_merge
    from mergekit_runs import run_stock

    from mergekit_reasoning.method import reasoning_vector

    seen = []
    read = reasoning_vector._planned_inputs
    monkeypatch.setattr(reasoning_vector, "_planned_inputs", lambda frame: seen.append(read(frame)) or seen[-1])
    t, g, s = trio["target"], trio["grpo"], trio["sft"]
    recipe = {
        "merge_method": "reasoning_vector",
        "base_model": str(t),
        "models": [{"model": str(g), "parameters": {"role": "grpo"}}, {"model": str(s), "parameters": {"role": "sft"}}],
    }
    run_stock(recipe, tmp_path / "yaml")
    planned = [p for p in seen if p is not None]
    assert planned and {(str(m), r, settings.get("role")) for m, r, settings in planned[0]} == {
        (str(g), (0, 2), "grpo"),
        (str(s), (0, 2), "sft"),
        (str(t), (0, 2), None),
    }
    seen.clear()
    files = {name: str(p / "model.safetensors") for name, p in (("t", t), ("g", g), ("s", s))}
    raw = dict(recipe, base_model=files["t"])
    raw["models"] = [dict(m, model=files[k]) for m, k in zip(recipe["models"], "gs")]
    plan_flat_merge(RawPyTorchMergeConfig.model_validate(raw), str(tmp_path / "raw"), False, False, MergeOptions())
    planned = [p for p in seen if p is not None]
    assert planned and {(str(m), settings.get("role")) for m, _, settings in planned[0]} == {
        (files["g"], "grpo"),
        (files["s"], "sft"),
        (files["t"], None),
    }
