"""The embedded default: the add recipe, run offline on stand-ins, checked.

It makes three small random Qwen2 models (target, SFT, GRPO from one
initialisation), points `recipes/qwen1.5b_add.yml` at them, runs the *stock*
`mergekit-yaml` in a subprocess (so plugin discovery is exercised too), and
compares every merged tensor with a float64 reference.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import yaml

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import load_tensor, tensor_files
from mergekit_reasoning.core.shipped import recipes_dir
from mergekit_reasoning.testing.reference import compare_with_exact
from mergekit_reasoning.testing.standins import retarget, write_trio

RECIPE = "qwen1.5b_add.yml"


def stock_mergekit_yaml() -> list:
    """The `mergekit-yaml` installed beside this interpreter."""
    script = Path(sys.executable).with_name("mergekit-yaml")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mergekit.scripts.run_yaml"]


def run_demo(workdir: Optional[Path] = None, *, shape: str = "tiny", echo: Callable[[str], None] = print) -> dict:
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="mergekit-reasoning-demo-")) if temporary else Path(workdir)
    try:
        echo(f"1. stand-in models ({shape} Qwen2 shapes) in {root / 'models'}")
        models = write_trio(root / "models", shape=shape)
        recipe_data = yaml.safe_load((recipes_dir() / RECIPE).read_text(encoding="utf-8"))
        recipe = retarget(recipe_data, str(models["target"]), {"grpo": str(models["grpo"]), "sft": str(models["sft"])})
        recipe_path = root / RECIPE
        recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        echo(f"2. recipes/{RECIPE} pointed at them: {recipe_path}")

        out = root / "merged"
        command = stock_mergekit_yaml() + [str(recipe_path), str(out), "--quiet"]
        echo(f"3. stock merge: mergekit-yaml {recipe_path.name} {out}")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RecipeError(f"mergekit-yaml failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")

        report = check_against_reference(out, models, recipe["parameters"]["lambda"])
        echo(
            f"4. checked {report['tensors']} tensors against a float64 reference: "
            f"max error {report['max_ulp']:.2f} ulp of {report['dtype']}, "
            f"{report['exact_fraction']:.4%} of elements equal to the correctly rounded value"
        )
        echo(f"   tied output: {report['tied']} (lm_head.weight stored: {report['has_lm_head']})")
        echo(
            f"done: merged model in {out}"
            if not temporary
            else "done (temporary files removed; pass --workdir to keep them)"
        )
        return report
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def check_against_reference(out: Path, models: dict, lam: float) -> dict:
    """Compare each merged tensor with target + λ·(grpo − sft) computed in float64.

    Tensors are read and compared one at a time, block by block, so the check
    needs a few blocks of memory beside one tensor of each model, whatever the
    model's size.
    """
    merged, target, grpo, sft = (tensor_files(Path(p)) for p in (out, models["target"], models["grpo"], models["sft"]))
    if set(merged) != set(target):
        raise RecipeError(f"merged tensors differ from the target's: {sorted(set(merged) ^ set(target))[:3]}")
    worst, exact, total, dtype = 0.0, 0, 0, None
    for name in sorted(merged):
        value = load_tensor(merged[name], name)
        error, equal = compare_with_exact(
            value, load_tensor(target[name], name), [(load_tensor(grpo[name], name), load_tensor(sft[name], name), lam)]
        )
        worst, exact, total, dtype = max(worst, error), exact + equal, total + value.numel(), value.dtype
        del value
    if worst > 1.0:
        raise RecipeError(f"merged weights are {worst:.2f} ulp from the float64 reference (at most 1 allowed)")
    config = json.loads((out / "config.json").read_text())
    return {
        "tensors": len(merged),
        "max_ulp": worst,
        "exact_fraction": exact / max(total, 1),
        "dtype": str(dtype).removeprefix("torch."),
        "tied": bool(config.get("tie_word_embeddings")),
        "has_lm_head": "lm_head.weight" in merged,
    }
