"""Files shipped with the package: the recipes under `recipes/`."""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from mergekit_reasoning.core.errors import RecipeError

_PACKAGE = Path(__file__).resolve().parent.parent  # mergekit_reasoning/


def recipes_dir() -> Path:
    """`recipes/` beside the package in a checkout, or inside it once installed."""
    for candidate in (_PACKAGE.parent / "recipes", _PACKAGE / "recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the recipes folder is not installed with this package")


@dataclass(frozen=True)
class ShippedRecipe:
    """What `mergekit-reasoning recipes` says of one shipped recipe, read from its YAML alone."""

    name: str  # the file name without `.yml`
    path: Path
    target: str
    donors: Tuple[Tuple[str, str], ...]  # (role, model) in file order
    lam: object  # the global `lambda` as written (a number, or mergekit's per-layer form)


def shipped_recipes(folder: Optional[Path] = None) -> List[ShippedRecipe]:
    """Every shipped recipe, by name. Reads the YAML only (no mergekit, no hub)."""
    import yaml

    found = []
    for path in sorted(Path(folder or recipes_dir()).glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        donors = tuple(
            (str((entry.get("parameters") or {}).get("role")), str(entry.get("model")))
            for entry in data.get("models") or []
        )
        lam = (data.get("parameters") or {}).get("lambda", 1.0)
        found.append(ShippedRecipe(path.stem, path, str(data.get("base_model")), donors, lam))
    return found


def shipped_recipe(name: str, folder: Optional[Path] = None) -> Path:
    """The file of the shipped recipe NAME (with or without `.yml`); a one-line error naming the choices."""
    folder = Path(folder or recipes_dir())
    stem = name[: -len(".yml")] if name.endswith(".yml") else name
    names = [p.stem for p in sorted(folder.glob("*.yml"))]
    if stem not in names:
        raise RecipeError(f"no shipped recipe named {name!r}; choose one of: {', '.join(names)}")
    return folder / f"{stem}.yml"
