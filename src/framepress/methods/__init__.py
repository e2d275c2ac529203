"""Compression methods: one module each, registered by name on import."""

from . import fastv, fastvid, frames, gridpool, holitom, pool, random_drop, sttm, unified, visionzip  # noqa: F401
