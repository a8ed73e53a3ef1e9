"""The thread document's keys: the shortcuts of ``thread.version_key`` and ``thread.unpack``
give exactly the text and bytes of the general encoders they stand in for (a different key
would make a writer and a reader of one document disagree about its blobs)."""

from __future__ import annotations

import base64
import random
import string

from blockpoint_langgraph import thread as td
from blockstore.canonical import canonical_json


def test_version_key_is_the_canonical_json_of_the_version() -> None:
    rng = random.Random(23)
    alphabet = string.printable + "\x00\x7f\u00e9\u2028\U0001f600"
    versions: list[object] = [0, 1, -5, 10**30, True, False, None, 1.5, 2.0, "", "a", 'a"b',
                              "a\\b", "\x7f", "\u00e9", "\n", " x ",
                              "00000000000000000000000000000002.0.243798848838515"]
    versions += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
                 for _ in range(3000)]
    versions += [rng.randint(-10**20, 10**20) for _ in range(1000)]
    for version in versions:
        assert td.version_key(version) == canonical_json(version).decode("ascii"), version


def test_unpack_inverts_pack() -> None:
    rng = random.Random(4)
    for n in (0, 1, 2, 3, 57, 4096):
        data = bytes(rng.randrange(256) for _ in range(n))
        pair = td.pack(("msgpack", data))
        assert td.unpack(pair) == ("msgpack", data)
        assert td.unpack(pair)[1] == base64.b64decode(pair[1])
