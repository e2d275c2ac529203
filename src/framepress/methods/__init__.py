"""Compression methods: one module each, registered by name on import."""

from . import sttm  # noqa: F401
