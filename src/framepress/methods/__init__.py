"""Compression methods: one module each, registered by name on import."""

from . import (  # noqa: F401
    divprune,
    dycoke,
    fastv,
    fastvid,
    framefusion,
    frames,
    gridpool,
    holitom,
    pool,
    prunevid,
    random_drop,
    sttm,
    unified,
    visionzip,
)
