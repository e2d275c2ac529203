"""framepress: training-free visual-token compression for video large language models.

The names below load on first use, so ``import framepress`` (and the command line, which sets its signal
handlers first) does not wait for torch and transformers.
"""

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "Handle": "patch",
    "LayerInputs": "layer",
    "Session": "session",
    "Stream": "stream",
    "Tokens": "tokens",
    "apply": "patch",
    "compress": "api",
    "load": "pipeline",
    "methods": "api",
    "register": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # framepress.registry, framepress.video, ...
        raise AttributeError(f"module 'framepress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """``framepress.methods`` is the function :func:`framepress.api.methods`, also once the ``framepress.methods`` subpackage (one module
    per method) is imported: the import system would otherwise bind the subpackage over it."""

    def __setattr__(self, name, value):
        if name == "methods" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
