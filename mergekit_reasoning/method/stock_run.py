"""Check a reasoning_vector recipe's weight headers before mergekit's `run_merge` opens them.

`run_merge` warms mergekit's loader cache, which opens every input's safetensors
headers, before it plans the merge, so the method's own checks never run on a
malformed file: `mergekit-yaml` printed safetensors' 40-line traceback that names
no model. The startup hook wraps `mergekit.merge.run_merge` as that module loads
(before `mergekit-yaml` and `mergekit-multi` import it by name); for this method
alone, each local input folder's shards are opened first and a broken one is one
line naming the model and the shard. Every other method's call is passed through
untouched.
"""

from __future__ import annotations

import functools
import os

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import broken_shard
from mergekit_reasoning.method.reasoning_vector import NAME, one_line_at_mergekits_cli

_GUARDED = "__mergekit_reasoning_guarded__"


def refuse_broken_weights(config) -> None:
    """One line for the first local input folder whose safetensors shards fail to open."""
    for ref in config.referenced_models():
        folder = ref.model.path
        if ref.lora is None and os.path.isdir(folder):
            problem = broken_shard(folder)
            if problem:
                raise RecipeError(f"model {ref}: cannot open its weights: {problem}")


def guard(module) -> None:
    """Wrap `module.run_merge` (mergekit.merge's) once."""
    run_merge = getattr(module, "run_merge", None)
    if run_merge is None or getattr(run_merge, _GUARDED, False):
        return

    @functools.wraps(run_merge)
    def checked_run_merge(merge_config, *args, **kwargs):
        if getattr(merge_config, "merge_method", None) == NAME:
            with one_line_at_mergekits_cli():
                refuse_broken_weights(merge_config)
        return run_merge(merge_config, *args, **kwargs)

    setattr(checked_run_merge, _GUARDED, True)
    module.run_merge = checked_run_merge
