"""Re-merge exactly the recipes whose text or inputs changed.

Each output folder's manifest records a key: the hash of the recipe text and of
every input file. A recipe whose key matches and whose shards still hash as
recorded is skipped; the rest are merged again. One failure does not stop the
others, but makes the whole run fail.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

from mergekit_reasoning.core.errors import Error, RecipeError
from mergekit_reasoning.executor import manifest, run
from mergekit_reasoning.executor.recipe import Recipe


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


def regenerate(
    source: Path,
    out_dir: Path,
    settings: run.MergeSettings = run.MergeSettings(),
    *,
    echo: Callable[[str], None] = print,
) -> Outcome:
    outcome = Outcome()
    for path in recipe_files(source):
        out = Path(out_dir) / path.stem
        try:
            recipe = Recipe.read(path)
            recorded = manifest.completed(out)
            if recorded is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise RecipeError(
                    f"{out} exists and holds no merge manifest ({manifest.NAME}): regenerate replaces only the "
                    "folders it merged; move it or pick another --out"
                )
            inputs = None
            if recorded is not None:  # it may be current: hash the inputs to know
                inputs = manifest.describe_inputs(recipe.check())
                key = manifest.input_key(recipe.text, inputs)
                if recorded.get("key") == key and not manifest.output_problems(out, recorded):
                    echo(f"unchanged {path.name}: {out}")
                    outcome.skipped.append(path.name)
                    continue
            # A new output takes merge's own path: reserved while mergekit loads, inputs hashed as it runs.
            run.merge(recipe, [out], settings, overwrite=True, inputs=inputs, echo=echo)
            echo(f"merged    {path.name}: {out}")
            outcome.merged.append(path.name)
        except Error as error:
            echo(f"failed    {path.name}: {error}")
            outcome.failed.append(path.name)
        except Exception as error:  # one recipe's failure, whatever it is, does not stop the others
            echo(f"failed    {path.name}: {type(error).__name__}: {error}")
            outcome.failed.append(path.name)
    return outcome
