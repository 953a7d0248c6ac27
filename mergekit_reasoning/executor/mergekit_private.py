"""The private mergekit helpers the streaming executor reuses, in one place.

mergekit has no public API for writing an output model's config, tokenizer and
tag-along files the way `mergekit-yaml` does, only private functions in
`mergekit.merge`. Every use goes through this module, so a mergekit release
that moves, renames or re-signs one of them fails here, in one line that says
what to do, and `tests/test_package.py` says so before a user meets it. The
exception is `LoadTensor._resolve_name` (which stored tensor a load reads):
without it the streaming executor only falls back to mergekit's writer.
"""

import inspect
import logging
from contextlib import contextmanager
from importlib import metadata

from mergekit_reasoning.core.errors import RecipeError

# name -> the parameters we pass it
HELPERS = {
    "_model_out_config": ("config", "arch_info", "trust_remote_code"),
    "_copy_tokenizer": ("merge_config", "out_path", "options"),
    "_copy_tagalong_files": ("merge_config", "out_path", "files", "options"),
}


def helper_problems() -> list:
    """Each helper that mergekit.merge lacks or that no longer takes our arguments."""
    import mergekit.merge

    problems = []
    for name, parameters in HELPERS.items():
        function = getattr(mergekit.merge, name, None)
        if function is None:
            problems.append(f"mergekit.merge.{name} is gone")
            continue
        missing = [p for p in parameters if p not in inspect.signature(function).parameters]
        if missing:
            problems.append(f"mergekit.merge.{name} no longer takes {', '.join(missing)}")
    return problems


def _helper(name: str):
    import mergekit.merge

    function = getattr(mergekit.merge, name, None)
    if function is None:
        raise RecipeError(
            f"mergekit {metadata.version('mergekit')} has no mergekit.merge.{name}, which mergekit-reasoning "
            "needs to write the output like mergekit-yaml: install a supported mergekit (>=0.1.5,<0.2)"
        )
    return function


def model_out_config(config, arch_info, *, trust_remote_code: bool = False):
    """The output model's config, as `mergekit-yaml` writes it."""
    with _quiet_torch_dtype():
        return _helper("_model_out_config")(config, arch_info, trust_remote_code=trust_remote_code)


def copy_tokenizer(config, out_path: str, *, options) -> None:
    _helper("_copy_tokenizer")(config, out_path, options=options)


def copy_tagalong_files(config, out_path: str, *, files, options) -> None:
    _helper("_copy_tagalong_files")(config, out_path, files=files, options=options)


class _DropTorchDtypeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`torch_dtype` is deprecated" not in record.getMessage()


@contextmanager
def _quiet_torch_dtype():
    """mergekit sets `config.torch_dtype`, which transformers 5 answers with a deprecation
    notice on every merge; the value is still honoured, so the notice only adds noise."""
    log = logging.getLogger("transformers.configuration_utils")
    notice = _DropTorchDtypeNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def resolve_tensor_name(load, loader):
    """The stored name mergekit's LoadTensor `load` reads from `loader`, or None when it
    would convert or miss the tensor (or this mergekit resolves names some other way)."""
    resolve = getattr(load, "_resolve_name", None)
    if resolve is None:
        return None  # the streaming executor then keeps mergekit's own writer
    return resolve(loader)
