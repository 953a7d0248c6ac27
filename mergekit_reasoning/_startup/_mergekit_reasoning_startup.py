"""Register `reasoning_vector` the moment mergekit loads its merge methods.

mergekit has no plugin discovery, so the installed `mergekit_reasoning.pth` imports
this module at interpreter start. It must cost next to nothing there: it only puts
a finder on `sys.meta_path` that waits for `mergekit.merge_methods`; torch,
mergekit and this package's method are imported only when mergekit itself is.
"""

import sys

_WATCHED = "mergekit.merge_methods"


class _RegisterAfterImport:
    """Meta-path finder that wraps the watched module's loader, then steps aside."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != _WATCHED:
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

        def exec_then_register(module):
            exec_module(module)
            cls.uninstall()
            _register()

        spec.loader.exec_module = exec_then_register
        return spec

    @classmethod
    def uninstall(cls):
        if cls in sys.meta_path:
            sys.meta_path.remove(cls)


def _register():
    try:
        import mergekit_reasoning.method.reasoning_vector  # noqa: F401  (registers on import)
    except Exception as error:  # a broken plugin must not break mergekit itself
        import warnings

        warnings.warn(f"mergekit-reasoning: reasoning_vector not registered: {error}", stacklevel=2)


def install():
    if _WATCHED in sys.modules:
        _register()
    elif _RegisterAfterImport not in sys.meta_path:
        sys.meta_path.insert(0, _RegisterAfterImport)


install()
