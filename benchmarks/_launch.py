"""Start the project's commands in a fresh interpreter, wherever the packages live.

On the GPU machine the packages are wheels installed with `pip --target` into a
folder named by MKR_SITES; `site.addsitedir` adds it *and* runs its .pth files,
which is how the stock mergekit-yaml finds `reasoning_vector` there. Elsewhere
MKR_SITES is unset and this is the ordinary installed command.
"""

import sys

BOOT = (
    "import os, runpy, site, sys\n"
    "for p in filter(None, os.environ.get('MKR_SITES', '').split(':')): site.addsitedir(p)\n"
    "module = sys.argv[1]; sys.argv = sys.argv[1:]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)

MERGEKIT_YAML = "mergekit.scripts.run_yaml"
MERGEKIT_REASONING = "mergekit_reasoning.cli"


def command(module: str) -> list:
    return [sys.executable, "-c", BOOT, module]
