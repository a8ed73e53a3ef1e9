"""The demo's store and key: a fresh place per run, and checkpoints authenticated where the
store is shared.

* **A store given to the demo** (``--store URL``, else ``$BLOCKPOINT_STORE_URL``, the
  variable ``cluster.yaml`` exports on every node; any URL of ``blockstore/urls.py``) is
  never written at its root: each run takes a fresh place under it, ``demo-<UTC time>-<6
  hex>`` (a sub-prefix of an object store, a subdirectory of a file store). A run must never
  restore an earlier run's checkpoints - its stages would start from that run's end state
  and the exactness check would compare against the wrong start - and nothing else in the
  store is touched. Without a store the demo uses a directory in its work dir, as before.
* ``memory://`` is refused: a memory store lives in one process; the stages run in others.
* **Keys.** On a shared store (one that declares ``capabilities.shared``: an object store)
  pickle checkpoints need a key, and the demo never opts out (``allow_unauthenticated``
  stays False). The key is the key file named by ``$BLOCKPOINT_CHECKPOINT_KEY_FILE`` (or
  ``$BLOCKPOINT_CHECKPOINT_KEY`` on one machine; ``blockstore/keys.py``), read where each
  state is opened - in the stage's worker process - so it must reach every worker: the key
  file on every node (``cluster.yaml`` mounts it), only its path in a runtime env; never
  the key itself in one (Ray shows runtime envs in its job table).
  Before the run the demo checks that the driver has a key and that the same key reaches
  a worker on every node (a zero-CPU task per node compares a fingerprint), so a missing or
  different key is one clear error at the start instead of ``CheckpointKeyRequired`` or a
  MAC mismatch in the middle. After the run it verifies every generation of its leases
  with the key (MACs included) and reports the count.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import DemoSetupError

__all__ = ["STORE_ENV", "AuthReport", "check_key", "check_key_reaches", "key_fingerprint",
           "new_run_id", "place_exists", "remove_run_place", "run_store_url",
           "verify_authenticated"]

#: The environment variable naming the cluster's store (cluster.yaml, docs/OPERATIONS.md).
STORE_ENV = "BLOCKPOINT_STORE_URL"
_FINGERPRINT_TAG = b"blockpoint demo key fingerprint\0"


def new_run_id() -> str:
    """``demo-<UTC time>-<6 hex>``: the run's place in the store and its Ray namespace."""
    return time.strftime("demo-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def run_store_url(base: str, run_id: str | None = None) -> str:
    """A fresh store place for one run under ``base`` (see the module docstring).

    Raises:
        DemoSetupError: ``base`` is a memory store.
        blockstore.StoreURLError: ``base`` is not a store URL (its ``part`` names why).
    """
    from blockstore import parse_store_url

    url = parse_store_url(base)
    run_id = run_id or new_run_id()
    if url.scheme == "memory":
        from blockstore.redact import redact_url

        raise DemoSetupError(f"store {redact_url(base)!r}: a memory store lives in one "
                             "process, and the "
                             "demo's stages run in other processes; use a directory every "
                             "node reaches or an object store", what="store")
    if url.is_object_store:
        prefix = f"{url.prefix}/{run_id}" if url.prefix else run_id
        return type(url)(url.scheme, url.location, prefix, url.options).to_url()
    return os.path.join(url.location, run_id)


def place_exists(store_url: str) -> bool:
    """Whether a run's place is there already: a file store's directory (an object store's
    fresh prefix is taken as new: its name carries the time to the second and 24 random bits)."""
    from blockstore import parse_store_url

    url = parse_store_url(store_url)
    return not url.is_object_store and os.path.lexists(url.location)


def remove_run_place(store_url: str) -> None:
    """Remove the place a refused run made (a refused setup leaves nothing behind): a file
    store's directory, or every object under an object store's fresh prefix. Only called
    for a place this run created, before any stage ran; failures are ignored (the setup's
    own error is what the user needs to see)."""
    import shutil

    from blockstore import BlockStoreError, parse_store_url

    url = parse_store_url(store_url)
    if not url.is_object_store:
        import os

        # Only a run's own directory (``demo-...``), never a store or a directory above one
        # (defence in depth, as for an object store's prefix below).
        if os.path.basename(os.path.normpath(url.location)).startswith("demo-"):
            shutil.rmtree(url.location, ignore_errors=True)
        return
    if not url.prefix or not url.prefix.rsplit("/", 1)[-1].startswith("demo-"):
        return  # never a store's root nor a place that is not a run's (defence in depth)
    from blockstore.objectclient import ObjectClient

    try:
        client = ObjectClient(url)
        try:
            client.delete([o["path"] for o in client.list("")])
        finally:
            client.close()
    except (BlockStoreError, OSError):
        pass


def key_fingerprint(environ: Mapping[str, str] | None = None) -> str | None:
    """A short, non-secret fingerprint of the current checkpoint key, or ``None`` if unset.

    Raises:
        DemoSetupError: the key setting is malformed (e.g. old keys without a current one).
    """
    from blockstore.keys import resolve_keys

    try:
        ring = resolve_keys(None, environ=environ)
    except (ValueError, TypeError) as exc:
        raise DemoSetupError(f"checkpoint key: {exc}", what="key") from exc
    if ring is None:
        return None
    return hmac.new(ring.current, _FINGERPRINT_TAG, hashlib.sha256).hexdigest()[:12]


def check_key(store_url: str, *, shared: bool) -> str | None:
    """The driver's key fingerprint; a shared store without a key is refused.

    Raises:
        DemoSetupError: ``shared`` and no key is configured.
    """
    from blockstore.keys import KEY_ENV, KEY_FILE_ENV

    fp = key_fingerprint()
    if shared and fp is None:
        raise DemoSetupError(
            f"store {store_url} is shared (an object store): its pickle checkpoints must be "
            f"authenticated, and no key is set (${KEY_FILE_ENV} or ${KEY_ENV}). Put the key in "
            f"a file, mode 0600, at the same path on every node and set ${KEY_FILE_ENV} to it "
            f"for the driver and the workers - under `ray job submit`: --runtime-env-json "
            f"'{{\"env_vars\": {{\"{KEY_FILE_ENV}\": \"/path/to/key\"}}}}' (docs/OPERATIONS.md, "
            "Security)", what="key")
    return fp


def _worker_view(store_url: str | None) -> tuple[str, str | None, str | None]:
    """On a worker: its node, its key fingerprint, and why it cannot open the store (or
    ``None``)."""
    import ray

    from blockstore import BlockStoreError, open_store

    problem = None
    if store_url is not None:
        try:
            with open_store(store_url, create=False) as st:
                st.list_leases()
        except (BlockStoreError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    return ray.get_runtime_context().get_node_id(), key_fingerprint(), problem


def check_key_reaches(node_ids: Sequence[str], fingerprint: str | None, *,
                      store_url: str | None = None, timeout: float = 60.0) -> None:
    """Check, with one zero-CPU task pinned to each node, that the job's workers there see
    the driver's key (same fingerprint; skipped when ``fingerprint`` is None) and, given
    ``store_url``, can open that store (its credentials reach them too).

    Raises:
        DemoSetupError: a node's workers have no key or another one, or cannot open the store.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from blockstore.keys import KEY_ENV, KEY_FILE_ENV

    task = ray.remote(num_cpus=0, max_retries=0)(_worker_view)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
            .remote(store_url) for n in node_ids]
    views = ray.get(refs, timeout=timeout)
    blocked = [(n[:8], why) for n, _, why in views if why is not None]
    if blocked:
        node, why = blocked[0]
        raise DemoSetupError(
            f"the workers on node(s) {', '.join(n for n, _ in blocked)} cannot open the store "
            f"{store_url}: {why} (on node {node}). Every worker of the job needs the store's "
            "credentials from its own node - an instance profile or web identity, "
            "~/.aws/credentials (or $AWS_SHARED_CREDENTIALS_FILE), or the environment the "
            "node's Ray was started with; never the job's runtime_env, which Ray shows in its "
            "job table (docs/OPERATIONS.md, Credentials and IAM)", what="store")
    if fingerprint is None:
        return
    seen = {n: fp for n, fp, _ in views}
    wrong = sorted(n[:8] for n in node_ids if seen.get(n) != fingerprint)
    if wrong:
        missing = [n[:8] for n in node_ids if seen.get(n) is None]
        raise DemoSetupError(
            f"the checkpoint key does not reach the workers on node(s) {', '.join(wrong)} "
            f"({'no key' if missing else 'another key'} there): put the key in a file, mode "
            f"0600, at the same path on every node (cluster.yaml's file_mounts) and set "
            f"${KEY_FILE_ENV} to that path (its path may go in the job's runtime_env; "
            f"${KEY_ENV} may not: Ray shows a job's runtime env in its job table) - "
            "docs/OPERATIONS.md, Security", what="key")


@dataclass(frozen=True, slots=True)
class AuthReport:
    """What the post-run verification found.

    Attributes:
        keyed: a key was configured (every generation must then carry a valid MAC).
        verified: committed generations that verified (checksums, and MACs when keyed).
        failed: committed generations that did not (a MAC missing or wrong counts here).
    """

    keyed: bool
    verified: int
    failed: int

    @property
    def authenticated(self) -> bool:
        """Every committed generation carries a MAC that verified under the key."""
        return self.keyed and self.verified > 0 and self.failed == 0

    def describe(self) -> str:
        if not self.keyed:
            return f"no (no key; {self.verified} generations verified by CRC-32C only)"
        if self.authenticated:
            return f"yes: {self.verified} of {self.verified} generations, MAC verified"
        return f"NO: {self.failed} of {self.verified + self.failed} generations fail the MAC"


def verify_authenticated(store_url: str, leases: Sequence[str]) -> AuthReport:
    """Verify every generation of ``leases`` (absent ones skipped) with the configured key."""
    from blockstore import open_store
    from stages import NoCheckpointError, verify_lease

    keyed = key_fingerprint() is not None
    ok = bad = 0
    with open_store(store_url, create=False) as store:
        for name in leases:
            info = store.find(name)
            if info is None:
                continue
            try:
                reports = verify_lease(store.open_reader(info.lease_id))
            except NoCheckpointError:
                continue
            ok += sum(1 for r in reports if r.status == "ok")
            bad += sum(1 for r in reports if r.corrupt)
    return AuthReport(keyed=keyed, verified=ok, failed=bad)
