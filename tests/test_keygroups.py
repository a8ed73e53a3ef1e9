"""Key groups (stages/checkpoint/keygroups.py): stable hashing of record keys, ranges that
partition the groups, and refusals that name the problem. No Ray: pure functions."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stages.checkpoint.keygroups import (
    DEFAULT_MAX_PARALLELISM,
    encode_key,
    instance_of_group,
    key_group,
    key_group_range,
)
from stages.errors import KeyGroupError, StageError

KEYS = ["user-1", "", "ü", b"raw", 0, 1, -1, 2**70, True, False, None, ("a", 1), ((), (None,))]


def test_the_group_is_the_same_in_another_process_with_another_hash_seed() -> None:
    here = [key_group(k) for k in KEYS]
    code = ("import sys; from tests.test_keygroups import KEYS; "
            "from stages.checkpoint.keygroups import key_group; "
            "print([key_group(k) for k in KEYS])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == str(here)


def test_keys_of_different_types_are_different_keys() -> None:
    encodings = {encode_key(k) for k in [1, "1", b"1", True, (1,), ("1",)]}
    assert len(encodings) == 6
    assert encode_key(("a", "bc")) != encode_key(("ab", "c"))


def test_groups_are_in_range_and_spread() -> None:
    groups = [key_group(f"k{i}") for i in range(10_000)]
    assert min(groups) >= 0 and max(groups) < DEFAULT_MAX_PARALLELISM
    counts = [groups.count(g) for g in range(DEFAULT_MAX_PARALLELISM)]
    assert min(counts) > 40 and max(counts) < 120  # mean 78


@pytest.mark.parametrize("m", [1, 7, 128, 1000])
def test_ranges_partition_the_groups_and_invert(m: int) -> None:
    for p in sorted({p for p in (1, 2, 3, 5, m) if p <= m}):
        seen = []
        for i in range(p):
            r = key_group_range(i, p, m)
            assert len(r) in (m // p, m // p + 1)
            seen.extend(r)
            assert all(instance_of_group(g, p, m) == i for g in r)
        assert seen == list(range(m))


@pytest.mark.parametrize("bad", [1.5, [1], {"a": 1}, object(), ("ok", 2.0)])
def test_a_key_without_a_stable_hash_is_refused_naming_its_type(bad: object) -> None:
    with pytest.raises(KeyGroupError, match="has no stable hash") as err:
        key_group(bad)
    assert isinstance(err.value, StageError) and isinstance(err.value, ValueError)
    assert err.value.key_type in {"float", "list", "dict", "object"}


def test_out_of_range_arguments_are_refused() -> None:
    with pytest.raises(KeyGroupError, match="parallelism 5 is outside 1..4"):
        key_group_range(0, 5, 4)
    with pytest.raises(KeyGroupError, match="instance index 2"):
        key_group_range(2, 2, 4)
    with pytest.raises(KeyGroupError, match="max_parallelism"):
        key_group("k", 0)
    with pytest.raises(KeyGroupError, match="key group 4"):
        instance_of_group(4, 2, 4)
