"""Compression methods: one module each, registered by name on import."""

from . import divprune, dycoke, fastv, fastvid, framefusion, frames, gridpool, holitom, pool, random_drop, sttm, unified, visionzip  # noqa: F401
