"""Re-merge exactly the recipes whose text or inputs changed.

Each output folder's manifest records a key: the hash of the recipe text and of
every input file. A recipe whose key matches and whose shards still hash as
recorded is skipped; the rest are merged again. One failure does not stop the
others, but makes the whole run fail.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

from mergekit_reasoning.errors import RecipeError


@dataclass
class Outcome:
    merged: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)


def recipe_files(source: Path) -> List[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    files = sorted(list(source.glob("*.yml")) + list(source.glob("*.yaml")))
    if not files:
        raise RecipeError(f"{source}: no recipes (*.yml) found")
    return files


def regenerate(source: Path, out_dir: Path, options, *, echo: Callable[[str], None] = print) -> Outcome:
    from mergekit_reasoning.merge import stream
    from mergekit_reasoning.repro.manifest import NAME, describe_inputs, input_key, output_problems, read_manifest
    from mergekit_reasoning.merge.recipe import check_recipe, load_recipe

    outcome = Outcome()
    for recipe in recipe_files(source):
        out = Path(out_dir) / recipe.stem
        try:
            checked = check_recipe(*load_recipe(recipe))
            inputs = describe_inputs(checked)
            key = input_key(checked.text, inputs)
            if (out / NAME).exists():
                manifest = read_manifest(out)
                if manifest.get("key") == key and not output_problems(out, manifest):
                    echo(f"unchanged {recipe.name}: {out}")
                    outcome.skipped.append(recipe.name)
                    continue
            stream.merge(checked, [out], options, overwrite=True, inputs=inputs)
            echo(f"merged    {recipe.name}: {out}")
            outcome.merged.append(recipe.name)
        except RecipeError as error:
            echo(f"failed    {recipe.name}: {error.message}")
            outcome.failed.append(recipe.name)
    return outcome
