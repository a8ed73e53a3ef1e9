"""CRC-32C (Castagnoli) for blocks and headers.

Why three implementations, tried in this order:

* ``crc32c`` (the CPU's CRC32 instruction, ~10 GB/s here) takes any contiguous buffer
  (memoryview, bytearray, numpy array) without a copy and **releases the GIL** while it
  runs. That is what lets the checkpoint writer and the restore reader checksum chunks in
  their worker pool while the main thread writes, reads or waits in ``fsync``
  (``BENCHMARKS.md``, ``bench/notes/sync.md``).
* ``google-crc32c`` (same instruction, identical values) releases the GIL only for
  ``bytes`` of 1 MiB or more - never for the memoryviews of numpy buffers the checkpoint
  path hands it - so its CRCs serialize with everything else the process does. It is kept
  as the fallback for environments installed before ``crc32c`` was a dependency.
* ``crcmod`` (~0.37 GB/s, pure table lookups) always works.

All three give identical values (``tests/test_checksum.py``). Non-contiguous views are
hashed as their bytes in C order (copied once).
"""

from __future__ import annotations

import warnings
from typing import Callable

import crcmod.predefined
import numpy as np

__all__ = ["BACKEND", "RELEASES_GIL", "crc32c", "crc32c_crcmod"]

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


def _contiguous(data: object) -> object:
    """``data`` as a C-contiguous buffer: itself when it is one, else its bytes."""
    if isinstance(data, bytes):
        return data
    mv = memoryview(data)  # type: ignore[arg-type]
    return mv if mv.c_contiguous else mv.tobytes()


def _as_numpy(data: object) -> object:
    if isinstance(data, bytes):
        return data
    mv = memoryview(data)  # type: ignore[arg-type]
    if not mv.c_contiguous:
        return bytes(mv)
    return np.frombuffer(mv.cast("B"), dtype=np.uint8)


def _load() -> tuple[Callable[..., int], str, bool]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns on import when it has no hardware path
            import crc32c as _icrar
        if _icrar.hardware_based:
            fn = _icrar.crc32c

            def _crc32c_hw(data: bytes | bytearray | memoryview, value: int = 0) -> int:
                # gil_release_mode=-1: released for inputs of 32 KiB and more.
                return fn(_contiguous(data), value, -1)

            return _crc32c_hw, "crc32c", True
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    try:
        import google_crc32c as _gcrc

        if _gcrc.implementation != "c":  # the pure-python fallback is slower than crcmod
            raise ImportError("google_crc32c has no C extension here")

        def _crc32c_google(data: bytes | bytearray | memoryview, value: int = 0) -> int:
            return _gcrc.extend(value, _as_numpy(data))

        return _crc32c_google, "google-crc32c", False
    except ImportError:  # pragma: no cover - depends on the machine
        return crc32c_crcmod, "crcmod", False


crc32c: Callable[..., int]
BACKEND: str
#: True if :func:`crc32c` lets other threads run while it hashes a large buffer.
RELEASES_GIL: bool
crc32c, BACKEND, RELEASES_GIL = _load()

crc32c.__doc__ = """CRC-32C of ``data`` continuing from ``value`` (0 to start).

``crc32c(b"123456789") == 0xE3069283``; ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
"""
