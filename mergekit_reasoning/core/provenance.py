"""What produced a file: installed package versions, recorded in every manifest and results file."""

from importlib import metadata
from typing import Dict, Iterable, Optional

PACKAGES = ("mergekit-reasoning", "mergekit", "torch", "transformers", "safetensors")


def package_versions(names: Iterable[str] = PACKAGES) -> Dict[str, Optional[str]]:
    """Installed versions of `names` (None for a package that is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
