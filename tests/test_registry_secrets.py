"""No MAC key, in any form, is ever written to the store or sent through Ray (issues 18, 19).

A ``@checkpointed(registrar=...)`` actor defined in a script (its class pickled by value, as
Ray ships it) takes its key the documented cluster way - a 0600 key file, its *path* in the
actor's runtime env - and registers with a real scheduler on a real local Ray; once the
scheduler's registry holds the actor's relaunch recipe, every byte of the store - and every
base64 run in it, decoded (the registry keeps pickles as base64) - is scanned for the key,
raw, hex and base64. ``mac_key=`` on such a class is refused when Ray would pickle it
(``MacKeyNotShippable``), so the key never reaches Ray's GCS; the relaunch recipe of a
keyed configuration is keyless.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
import uuid
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from polling import wait_for

from blockstore import open_store
from scheduler import get_or_create
from scheduler.hooks import SchedulerRegistrar
from stages import checkpointed

pytestmark = pytest.mark.ray

# As a script's classes are: pickled by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

KEY = "mac-key-" + uuid.uuid4().hex  # unique: found only where it was written
_B64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")


class Tally:
    def __init__(self) -> None:
        self.state = {"n": 0}

    def add(self) -> int:
        self.state["n"] += 1
        return self.state["n"]


def _store_bytes(root: Path) -> list[bytes]:
    """Every file of the store, and every base64 run in them, decoded (recursively)."""
    out: list[bytes] = []
    todo = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    while todo:
        data = todo.pop()
        out.append(data)
        for run in _B64_RUN.findall(data):
            try:
                decoded = base64.b64decode(run + b"=" * (-len(run) % 4))
            except (binascii.Error, ValueError):
                continue
            if len(decoded) >= 16:
                todo.append(decoded)
    return out


def _forms(key: str) -> list[bytes]:
    raw = key.encode()
    forms = [raw, raw.hex().encode(), key.encode("utf-16-le")]
    for shift in range(3):  # base64 of the key at any alignment, edges dropped
        enc = base64.b64encode(b"\0" * shift + raw)[4:-4]
        forms.append(enc)
    return forms


def test_no_key_in_the_store_after_registering_a_keyed_actor(ray_local: None,
                                                              tmp_path: Path) -> None:
    name = f"sched-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "store"
    open_store(str(root), block_size=64 * 1024).close()
    key_file = tmp_path / "checkpoint_key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    sched = get_or_create(name, store_url=str(root), poll_interval=0.2, retry_interval=0.5)
    actor = None
    try:
        cls = ray.remote(num_cpus=0.25, concurrency_groups=checkpointed.GROUPS)(
            checkpointed(store=str(root), key="tally", every_calls=1,
                         registrar=SchedulerRegistrar(name))(Tally))
        actor = cls.options(runtime_env={"env_vars": {
            "BLOCKPOINT_CHECKPOINT_KEY_FILE": str(key_file)}}).remote()
        assert ray.get(actor.add.remote()) == 1

        def recipe_persisted() -> bool:
            return any(b"ActorRecipe" in data and b"Tally" in data
                       for data in _store_bytes(root))
        wait_for(recipe_persisted, timeout=90, what="the registry holds tally's recipe")
        status = ray.get(sched.stage.remote("tally"))
        assert status is not None
        leaks = [form for data in _store_bytes(root) for form in _forms(KEY) if form in data]
        assert leaks == [], "the MAC key was written to the store"
        # The actor did write keyed checkpoints: their MACs verify under the file's key only.
        from stages import verify_lease
        store = open_store(str(root))
        try:
            reports = verify_lease(store.open_reader("tally"), key=KEY)
            assert reports and all(r.has_mac and r.mac_checked for r in reports
                                   if r.status == "ok"), reports
            assert any(r.status == "ok" for r in reports), reports
            wrong = verify_lease(store.open_reader("tally"), key="another-key")
            assert not any(r.status == "ok" for r in wrong), wrong
        finally:
            store.close()
    finally:
        if actor is not None:
            ray.kill(actor)
        ray.kill(sched)


def test_mac_key_on_a_class_ray_ships_by_value_is_refused_not_sent(ray_local: None,
                                                                   tmp_path: Path) -> None:
    """Ray pickles a script's class by value into its GCS function table, readable by every
    client of the cluster: ``mac_key=`` there is refused when Ray pickles it, and no byte of
    the key is in the GCS internal KV afterwards."""
    from ray.experimental import internal_kv

    from stages import MacKeyNotShippable

    cls = ray.remote(num_cpus=0.25, concurrency_groups=checkpointed.GROUPS)(
        checkpointed(store=str(tmp_path / "store"), key="by-value", every_calls=1,
                     mac_key=KEY)(Tally))
    with pytest.raises(Exception) as err:
        cls.remote()
    chain = [err.value, err.value.__cause__, err.value.__context__]
    assert any(isinstance(e, MacKeyNotShippable) for e in chain) or \
        "MacKeyNotShippable" in str(err.value), repr(err.value)
    assert "BLOCKPOINT_CHECKPOINT_KEY_FILE" in str(err.value) and KEY not in str(err.value)
    holding = [k[:40] for ns in (b"fun", None)
               for k in internal_kv._internal_kv_list(b"", namespace=ns)
               if KEY.encode() in (internal_kv._internal_kv_get(k, namespace=ns) or b"")]
    assert holding == [], f"the MAC key is in the GCS internal KV under {holding}"


def test_the_recipe_of_a_keyed_configuration_is_keyless(store_dir: str) -> None:
    """A relaunch recipe pickles the class by value without the key (``recipe.py``)."""
    from stages.actors.recipe import ActorRecipe

    cls = checkpointed(store=store_dir, key="k", mac_key=KEY)(Tally)
    recipe = ActorRecipe.build("k", cls, (), {}, store_url=store_dir)
    assert all(form not in recipe.constructor for form in _forms(KEY))
    actor_cls, _, _ = recipe.unpack()
    assert actor_cls.__bp_config__.mac_key is None


def test_config_repr_never_shows_the_key(store_dir: str) -> None:
    cls = checkpointed(store=store_dir, key="k", mac_key=KEY)(Tally)
    assert KEY not in repr(cls.__bp_config__)
    assert cls.__bp_config__.mac_key == KEY  # still there for this process's incarnations
    assert os.fspath(store_dir) in repr(cls.__bp_config__)


