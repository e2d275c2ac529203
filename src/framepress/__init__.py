"""framepress: training-free visual-token compression for video large language models."""

from . import methods as _methods  # noqa: F401  (registers the built-in methods)
from .api import compress, methods
from .layer import LayerInputs
from .patch import Handle, apply
from .pipeline import load
from .registry import register
from .session import Session
from .tokens import Tokens

__all__ = ["Handle", "LayerInputs", "Session", "Tokens", "apply", "compress", "load", "methods", "register"]
__version__ = "0.1.0"
