"""Register `reasoning_vector` the moment mergekit loads its merge methods.

mergekit has no plugin discovery, so the installed `mergekit_reasoning.pth` imports
this module at interpreter start. It must cost next to nothing there: it only puts
a finder on `sys.meta_path` that waits for `mergekit.merge_methods` (then registers
the method) and `mergekit.merge` (then lets the method check its inputs' headers
before `run_merge` opens them); torch, mergekit and this package's method are
imported only when mergekit itself is.
"""

import sys


def _register(module):
    try:
        import mergekit_reasoning.method.reasoning_vector  # noqa: F401  (registers on import)
    except Exception as error:  # a broken plugin must not break mergekit itself
        import warnings

        warnings.warn(f"mergekit-reasoning: reasoning_vector not registered: {error}", stacklevel=2)


def _guard_run_merge(module):
    try:
        from mergekit_reasoning.method.stock_run import guard

        guard(module)
    except Exception as error:
        import warnings

        warnings.warn(f"mergekit-reasoning: run_merge not guarded: {error}", stacklevel=2)


# module -> what to do once it has run; each entry leaves when done
_WATCHED = {"mergekit.merge_methods": _register, "mergekit.merge": _guard_run_merge}


class _AfterImport:
    """Meta-path finder that wraps each watched module's loader, then steps aside."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is cls or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_act(module):
            exec_module(module)
            action = _WATCHED.pop(fullname, None)
            if not _WATCHED:
                cls.uninstall()
            if action is not None:
                action(module)

        spec.loader.exec_module = exec_then_act
        return spec

    @classmethod
    def uninstall(cls):
        if cls in sys.meta_path:
            sys.meta_path.remove(cls)


def install():
    for name in [name for name in _WATCHED if name in sys.modules]:
        _WATCHED.pop(name)(sys.modules[name])
    if _WATCHED and _AfterImport not in sys.meta_path:
        sys.meta_path.insert(0, _AfterImport)


install()
