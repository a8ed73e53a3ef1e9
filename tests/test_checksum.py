"""CRC-32C: the crcmod implementation and the hardware ones give the same values.

Known vectors are from RFC 3720 (iSCSI) appendix B.4 and the common check value of
CRC-32C (``b"123456789"`` -> ``0xE3069283``).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore import checksum
from blockstore.checksum import crc32c, crc32c_crcmod

VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (b"a", 0xC1D04330),
    (b"The quick brown fox jumps over the lazy dog", 0x22620404),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]

IMPLS = [pytest.param(crc32c, id="default"), pytest.param(crc32c_crcmod, id="crcmod")]
try:
    import google_crc32c

    def _google(data: bytes, value: int = 0) -> int:
        return google_crc32c.extend(value, bytes(data))

    IMPLS.append(pytest.param(_google, id="google-crc32c-direct"))
except ImportError:  # pragma: no cover - depends on the machine
    pass
try:
    import crc32c as icrar_crc32c

    def _icrar(data: bytes, value: int = 0) -> int:
        return icrar_crc32c.crc32c(bytes(data), value)

    IMPLS.append(pytest.param(_icrar, id="crc32c-direct"))
except ImportError:  # pragma: no cover - depends on the environment
    pass


def test_backend_is_named() -> None:
    assert checksum.BACKEND in ("crc32c", "google-crc32c", "crcmod")
    assert checksum.RELEASES_GIL == (checksum.BACKEND == "crc32c")
    if checksum.BACKEND == "crcmod":
        assert crc32c is crc32c_crcmod


def test_large_crcs_let_other_threads_run() -> None:
    """The point of the ``crc32c`` backend: while one thread hashes a big buffer, another
    runs Python code. A backend holding the GIL lets no tick land inside the call."""
    if not checksum.RELEASES_GIL:
        pytest.skip(f"backend {checksum.BACKEND} holds the GIL")
    data = np.random.default_rng(3).integers(0, 256, 64 << 20, dtype=np.uint8)
    view = memoryview(data)
    ticks: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())

    inside = 0
    t = threading.Thread(target=spin)
    t.start()
    try:
        for _ in range(20):
            start = time.perf_counter()
            crc32c(view)
            end = time.perf_counter()
            inside += sum(1 for x in ticks[-10_000:] if start < x < end)
            if inside:
                break
    finally:
        stop.set()
        t.join()
    assert inside > 0, "no other thread ran during 20 CRCs of 64 MiB"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("data", "expected"), VECTORS)
def test_known_vectors(impl, data: bytes, expected: int) -> None:
    assert impl(data) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_continuation(impl) -> None:
    assert impl(b"56789", impl(b"1234")) == 0xE3069283
    assert impl(b"", impl(b"123456789")) == 0xE3069283
    assert impl(b"123456789", 0) == 0xE3069283


@pytest.mark.parametrize("impl", [crc32c, crc32c_crcmod])
def test_buffer_types(impl) -> None:
    raw = b"123456789"
    assert impl(bytearray(raw)) == 0xE3069283
    assert impl(memoryview(raw)) == 0xE3069283
    assert impl(memoryview(b"xx123456789yy")[2:-2]) == 0xE3069283
    assert impl(np.frombuffer(raw, dtype=np.uint8)) == 0xE3069283
    assert impl(bytearray()) == 0 and impl(memoryview(b"")) == 0
    assert impl(np.zeros(0, dtype=np.uint8)) == 0
    arr = np.arange(1000, dtype=np.float64).reshape(10, 100)
    assert impl(arr) == impl(arr.tobytes())
    assert impl(memoryview(arr)) == impl(arr.tobytes())
    strided = arr[:, ::3]  # not contiguous: hashed as its bytes in C order
    assert impl(strided) == impl(strided.tobytes())
    assert impl(memoryview(b"0123456789")[::2]) == impl(b"02468")


def test_implementations_agree_on_random_data() -> None:
    rng = np.random.default_rng(7)
    for size in (1, 3, 7, 8, 63, 64, 4095, 4096, 65537, 1 << 20):
        data = rng.integers(0, 256, size, dtype=np.uint8)
        expected = crc32c_crcmod(data.tobytes())
        assert crc32c(data) == crc32c(data.tobytes()) == crc32c(bytearray(data.tobytes())) \
            == expected
        half = size // 2
        assert crc32c(data[half:], crc32c(data[:half])) == expected
        assert crc32c_crcmod(data[half:].tobytes(), crc32c_crcmod(data[:half].tobytes())) == \
            expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.binary(max_size=4096))
def test_agree_and_compose(a: bytes, b: bytes) -> None:
    whole = crc32c_crcmod(a + b)
    assert crc32c(a + b) == whole
    assert crc32c(b, crc32c(a)) == whole
    assert crc32c_crcmod(b, crc32c_crcmod(a)) == whole


def test_detects_a_flipped_bit() -> None:
    data = bytearray(os.urandom(4096))
    before = crc32c(data)
    data[1234] ^= 0x10
    assert crc32c(data) != before
