"""CRC-32C (Castagnoli) for blocks and headers.

Why two implementations: ``crcmod`` is the required dependency and always works (~0.37 GB/s
here); ``google-crc32c`` uses the CPU's CRC32 instruction (~6.5 GB/s) and gives identical
values. The fast one is used when importable. ``google_crc32c`` accepts ``bytes`` and numpy
arrays but not ``memoryview``/``bytearray``, so other buffers are wrapped as a numpy view
(no copy).
"""

from __future__ import annotations

from typing import Callable

import crcmod.predefined
import numpy as np

__all__ = ["BACKEND", "crc32c", "crc32c_crcmod"]

_crcmod_template = crcmod.predefined.PredefinedCrc("crc-32c")


def crc32c_crcmod(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of ``data`` continuing from ``value``, computed by crcmod."""
    c = _crcmod_template.new()
    c.crcValue = value  # crcmod keeps the output value; continuing starts from it
    if not isinstance(data, bytes):
        mv = memoryview(data)
        # crcmod reads C-contiguous buffers only; others (strided views) are copied once.
        data = mv.cast("B") if mv.c_contiguous else mv.tobytes()
    c.update(data)
    return c.crcValue


def _as_fast_arg(data: object) -> object:
    if isinstance(data, bytes):
        return data
    mv = memoryview(data)  # type: ignore[arg-type]
    if not mv.c_contiguous:
        return bytes(mv)
    return np.frombuffer(mv.cast("B"), dtype=np.uint8)


try:
    import google_crc32c as _gcrc

    if _gcrc.implementation != "c":  # the pure-python fallback is slower than crcmod
        raise ImportError("google_crc32c has no C extension here")

    def _crc32c_fast(data: bytes | bytearray | memoryview, value: int = 0) -> int:
        return _gcrc.extend(value, _as_fast_arg(data))

    crc32c: Callable[..., int] = _crc32c_fast
    BACKEND = "google-crc32c"
except ImportError:  # pragma: no cover - depends on the machine
    crc32c = crc32c_crcmod
    BACKEND = "crcmod"

crc32c.__doc__ = """CRC-32C of ``data`` continuing from ``value`` (0 to start).

``crc32c(b"123456789") == 0xE3069283``; ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
"""
