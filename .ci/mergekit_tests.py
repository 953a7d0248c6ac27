"""mergekit's own test suite, run against the installed mergekit with this plugin installed.

A plugin that registers a merge method joins every test mergekit generates per
registered method, so a user (or a downstream CI) running mergekit's tests would
meet our failures. This runs the tests of the installed mergekit version: the
`tests/` of its sdist from PyPI, plus the two helper files the sdist leaves out
(`tests/__init__.py`, `tests/common.py`), taken from the matching release tag on
GitHub (or from MERGEKIT_TEST_HELPERS, a folder holding both, for offline runs).
Everything lands in test-data/mergekit-tests/mergekit-<version>/ (ignored by git)
beside mergekit's LICENSE from the same sdist (LGPL-3.0-only; see NOTICE there).
The package `mergekit/` of the sdist is not unpacked, so the installed one is
what the tests import.

    python .ci/mergekit_tests.py [pytest options]
"""

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test-data" / "mergekit-tests"
HELPERS = ("tests/__init__.py", "tests/common.py")
TAG_URL = "https://raw.githubusercontent.com/arcee-ai/mergekit/v{version}/{path}"
# The sdist's files the run needs: its tests, its pytest settings (pyproject.toml) and its licence.
FROM_SDIST = ("tests/", "pyproject.toml", "LICENSE")
# Tests to skip, by node id, each with its reason. None at mergekit 0.1.5: its suite needs
# no network (it passes with the hub switched off, as below), and its GPU tests skip
# themselves where CUDA or MPS is missing.
SKIP = {}


def main(argv) -> int:
    version = importlib.metadata.version("mergekit")
    work = DATA / f"mergekit-{version}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    unpack_sdist(version, work)
    try:
        provenance = [fetch_helper(version, path, work) for path in HELPERS]
    except HelpersUnavailable as missing:
        # Not a pass: said in one line, and CI's log shows it. The sdist lacks these two files
        # and this project does not commit mergekit's code; with them at hand the suite runs.
        print(f"mergekit_tests: NOT RUN: {missing}")
        return 0
    (work / "SOURCES").write_text("\n".join(provenance) + "\n", encoding="utf-8")

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(work / ".hf-home"))
    registered = subprocess.run(
        [sys.executable, "-c", "import mergekit.merge_methods as m; print(m.get('reasoning_vector').spec.name)"],
        capture_output=True,
        text=True,
        env=env,
    )
    if registered.stdout.strip() != "reasoning_vector":  # the point is to run them with the plugin
        sys.exit(f"mergekit_tests: reasoning_vector is not registered in this environment: {registered.stderr}")
    deselect = [arg for node in SKIP for arg in ("--deselect", node)]
    for node, reason in SKIP.items():
        print(f"mergekit_tests: skipping {node}: {reason}")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *deselect, *argv, "tests"]
    print(f"mergekit_tests: mergekit {version}'s suite in {work.relative_to(ROOT)}", flush=True)
    return subprocess.run(command, cwd=work, env=env).returncode


def unpack_sdist(version: str, work: Path) -> None:
    download = work / ".sdist"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        + [f"mergekit=={version}", "--dest", str(download)],
        check=True,
    )
    (archive,) = download.glob("mergekit-*.tar.gz")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            top, _, inner = member.name.partition("/")
            if not inner or not any(inner == p or (p.endswith("/") and inner.startswith(p)) for p in FROM_SDIST):
                continue
            member.name = inner
            tar.extract(member, work, filter="data")


class HelpersUnavailable(Exception):
    """The two helper files cannot be had here (no network to GitHub, no local copy)."""


def fetch_helper(version: str, path: str, work: Path) -> str:
    """Copy one helper file into `work`, from MERGEKIT_TEST_HELPERS or the release tag."""
    local = os.environ.get("MERGEKIT_TEST_HELPERS")
    if local:
        data = (Path(local) / Path(path).name).read_bytes()
        source = f"{Path(local) / Path(path).name} (MERGEKIT_TEST_HELPERS)"
    else:
        source = TAG_URL.format(version=version, path=path)
        try:
            with urllib.request.urlopen(source, timeout=15) as response:
                data = response.read()
        except OSError as error:
            raise HelpersUnavailable(
                f"cannot fetch {source} ({error}); set MERGEKIT_TEST_HELPERS=DIR to a folder holding "
                "tests/__init__.py and tests/common.py of mergekit's matching release"
            ) from None
    (work / path).write_bytes(data)
    return f"{path} sha256:{hashlib.sha256(data).hexdigest()} from {source}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
