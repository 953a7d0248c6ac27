"""mergekit's own test suite, run against the installed mergekit with this plugin installed.

A plugin that registers a merge method joins every test mergekit generates per
registered method, so a user (or a downstream CI) running mergekit's tests would
meet our failures. This runs the tests of the installed mergekit version: the
`tests/` of its sdist from PyPI, plus the two helper modules the sdist leaves out
(`tests/__init__.py`, `tests/common.py`). Those come from
test-data/mergekit-tests/helpers/, written for this project from how the tests use
them (CI reaches only package registries, not GitHub); MERGEKIT_TEST_HELPERS=DIR
runs the suite with another copy instead, such as mergekit's own from its release tag.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test-data" / "mergekit-tests"
HELPERS = ("tests/__init__.py", "tests/common.py")
OUR_HELPERS = DATA / "helpers"
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
    provenance = [copy_helper(path, work) for path in HELPERS]
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


def copy_helper(path: str, work: Path) -> str:
    """Copy one helper module into `work`, from MERGEKIT_TEST_HELPERS or this project's own."""
    folder = Path(os.environ.get("MERGEKIT_TEST_HELPERS") or OUR_HELPERS)
    source = folder / Path(path).name
    try:
        data = source.read_bytes()
    except OSError as error:
        sys.exit(f"mergekit_tests: cannot read the helper {source}: {error.strerror}")
    (work / path).write_bytes(data)
    return f"{path} sha256:{hashlib.sha256(data).hexdigest()} from {source}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
