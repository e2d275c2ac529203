"""Compression methods: one module each, registered by name on import."""

from . import fastv, frames, pool, random_drop, sttm, unified, visionzip  # noqa: F401
