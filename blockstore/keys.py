"""Checkpoint keys: the one place where the MAC key setting is read and resolved.

Stage checkpoints (``stages/checkpoint/mac.py``, ``stages/checkpoint/reader.py``, ``stages/checkpoint/state.py``), slotted
documents (``blockstore/document.py``, whose key comes from its callers) and the scheduler's
registry (``scheduler/registry.py``) all authenticate with the same key setting, so they all
resolve it here, with :func:`resolve_keys`. It lives in ``blockstore`` because documents are
a blockstore mechanism and ``blockstore`` imports nothing of ours.

Why a key *ring*: keys must be rotated without making old checkpoints unreadable. A
:class:`KeyRing` holds the **current** key - the only one anything is written with - and any
number of **old** keys, accepted when verifying. Rotation is then: add the new key as
current and the previous one as old on every node; once every retained generation and
document has been rewritten (``retention`` checkpoints later), drop the old key.

The setting, read from the process environment when the key is resolved (never at import):

* ``BLOCKPOINT_CHECKPOINT_KEY_FILE``: the path of a **key file** - its first non-empty line
  is the current key, each further non-empty line an old key (newest first). The file must
  be private to its owner: a mode that grants the group or others any access (``& 0o077``)
  is refused with :class:`~blockstore.errors.KeyFileError` (as ``ssh`` refuses a private
  key), so is a missing, unreadable, empty or non-UTF-8 file. The file is read again at
  every resolution, so a rotation needs no restart.
* ``BLOCKPOINT_CHECKPOINT_KEY``: the current key itself (the UTF-8 bytes of the value
  stripped of surrounding whitespace, as a key file's line is);
* ``BLOCKPOINT_CHECKPOINT_OLD_KEYS``: old keys, comma-separated (so a key never contains a
  comma), each stripped the same way; empty items are ignored; added to the file's old keys
  when both are set. Old keys without a current key are a configuration error, and so is a
  key file together with ``BLOCKPOINT_CHECKPOINT_KEY`` (which one is meant?).

Why the environment is stripped like the file: the same key text must be the same key
whichever way it comes, or moving a key from the environment into a key file (the way onto
a cluster, below) silently changes it. A value read with ``$(cat keyfile)`` loses its
trailing newline but one from a Kubernetes secret (``--from-file``) keeps it. Until this
rule, an environment value was used byte for byte: checkpoints written under a value with
surrounding whitespace were MACed with it. So a variable whose value differs once stripped
also contributes its raw value as an *old* key (accepted when verifying, never written
with) and logs a warning once per process naming the variable (never the key): those
checkpoints stay readable while the variable keeps its whitespace, and are rewritten with
the stripped key as stages checkpoint. A key file (its lines were always stripped) and a
stripped variable no longer accept them - let every stage checkpoint ``retention`` times
before moving such a key (docs/OPERATIONS.md, "Keys and rotation").

Why a file is the way onto a Ray cluster: whatever goes into a job's or an actor's
``runtime_env`` (``ray.init(runtime_env={"env_vars": ...})``, ``ray job submit
--runtime-env-json``) is kept in Ray's job table and shown by the dashboard and the state
API (``ray list jobs --detail``) to whoever reaches them. The key file's *path* may travel
that way - it is not a secret - while the key stays in a ``0600`` file on every node
(``cluster.yaml`` mounts it from the operator's machine with ``file_mounts``). The key
itself in the environment remains for a single machine and for nodes that export it
themselves; never pass it in a ``runtime_env``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import KeyFileError, KeySettingError

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "OLD_KEYS_ENV", "KeyRing", "KeySetting", "env_keys",
           "not_shown", "read_key_file", "resolve_keys", "shipped_by_ray"]

KEY_ENV = "BLOCKPOINT_CHECKPOINT_KEY"
OLD_KEYS_ENV = "BLOCKPOINT_CHECKPOINT_OLD_KEYS"
KEY_FILE_ENV = "BLOCKPOINT_CHECKPOINT_KEY_FILE"

log = logging.getLogger(__name__)

#: The variables whose surrounding whitespace was warned about in this process.
_warned_whitespace: set[str] = set()

#: The largest key file read (a key ring is a few lines; anything bigger is not one).
_MAX_KEY_FILE = 64 * 1024


def env_keys(value: str, what: str) -> tuple[bytes, ...]:
    """The keys of one environment value named ``what`` (for messages): the value stripped
    of surrounding whitespace (as a key file's lines are), then, when that changed it, the
    raw value - the key checkpoints written before this rule were MACed with, accepted as
    an old key (module docstring).

    Raises:
        KeySettingError: the value is only whitespace, or not UTF-8.
    """
    stripped = value.strip()
    if not stripped:
        raise KeySettingError(f"{what} is only whitespace: not a key (set the key, or "
                              "unset the variable)")
    if stripped == value:
        return (_as_key(value, what),)
    if what not in _warned_whitespace:
        _warned_whitespace.add(what)
        log.warning("%s has whitespace around the key (e.g. a trailing newline): the key is "
                    "the value stripped, as in a key file; checkpoints MACed earlier with "
                    "the whitespace are still accepted, as an old key, only while the "
                    "variable keeps it - let every stage checkpoint `retention` times before "
                    "moving the key into a key file (docs/OPERATIONS.md, 'Keys and "
                    "rotation'). (Warned once per process.)", what)
    return (_as_key(stripped, what), _as_key(value, what))


def _as_key(value: bytes | bytearray | str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            value = value.encode()
        except UnicodeEncodeError:
            # ``from None``: the UnicodeEncodeError's ``.object`` is the key itself. An
            # environment value that is not UTF-8 arrives here with surrogate escapes.
            raise KeySettingError(f"{what} is not valid UTF-8 text (keys are the UTF-8 "
                                  "bytes of a string; set a key that is)") from None
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")
    if not value:
        raise KeySettingError(f"an empty {what} is not a key")
    return bytes(value)


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys of one reader/writer: write with ``current``, verify with any of ``all``.

    Attributes:
        current: the key every new MAC is computed with.
        old: keys still accepted when verifying (rotation), newest first by convention.
    """

    current: bytes
    old: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.current, bytes) or not self.current:
            raise ValueError("the current key must be non-empty bytes")
        if any(not isinstance(k, bytes) or not k for k in self.old):
            raise ValueError("old keys must be non-empty bytes")

    @property
    def all(self) -> tuple[bytes, ...]:
        """Every key accepted for verification: the current one first, then the old ones."""
        return (self.current, *(k for k in self.old if k != self.current))

    def __repr__(self) -> str:  # never print key material
        return f"KeyRing(current=<{len(self.current)} bytes>, old=<{len(self.old)} keys>)"


#: What callers may pass where a key is asked for: a ring, one key (bytes or str), or a
#: sequence of keys (the first is the current one).
KeySetting = KeyRing | bytes | bytearray | str | Sequence[bytes | str] | None


def shipped_by_ray(path: str) -> str | None:
    """The directory of a Ray runtime-env package (``.../runtime_resources/.../_ray_pkg_*``)
    that ``path`` lies in, if any: such files were uploaded to Ray's GCS by a driver. The
    one check for every secret file read from the node (the key file here, the AWS shared
    credentials file in ``blockstore/credentials.py``)."""
    parts = os.path.realpath(path).split(os.sep)
    for i, part in enumerate(parts):
        if part.startswith("_ray_pkg_") and "runtime_resources" in parts[:i]:
            return os.sep.join(parts[:i + 1])
    return None


def not_shown(value: str) -> str:
    """A setting that may be the key itself, pasted where a name or path was asked for, as
    a message shows it: its length only."""
    return f"<{len(value)} characters, not shown>"


def _shown_unopened(path: str) -> str:
    """An absolute path that could not be opened, as a message may show it: the value may
    be the key itself pasted in the variable (base64 holds ``/``; 1 key in 64 starts with
    one), so it is shown only when it names a file in an existing directory other than the
    root - never a value whose only ``/`` is the first; else its length."""
    parent = os.path.dirname(path)
    if parent != os.path.dirname(parent) and os.path.isdir(parent):
        return repr(path)
    return f"<{len(path)} characters, not in an existing directory other than '/'; not shown>"


def read_key_file(path: str) -> KeyRing:
    """The key ring in the key file at ``path``: first non-empty line current, the rest old.

    Lines are stripped of surrounding whitespace (a trailing newline is not part of a key).

    Raises:
        KeyFileError: the path is relative or lies in a package Ray shipped (a runtime
            env's working_dir); the file is missing or unreadable, is not a regular file
            (a FIFO is refused, never waited on), is owned by another user, grants its
            group or others any access, is empty, too large, or not UTF-8 text. The message
            names the path, never the content.
    """
    if not os.path.isabs(path):
        # not shown: a value that is no absolute path may be the key itself, pasted there
        shown = not_shown(path)
        raise KeyFileError(f"${KEY_FILE_ENV} is not an absolute path ({shown}): give the "
                           "absolute path of the key file on the node (a relative one "
                           "resolves in whatever directory a worker runs in - under Ray, the "
                           "job's working_dir, which Ray ships through its GCS); if you put "
                           f"the key itself there, move it into a 0600 file", path=shown)
    shipped = shipped_by_ray(path)
    if shipped:
        raise KeyFileError(f"${KEY_FILE_ENV}: {path!r} lies in {shipped!r}, a package Ray "
                           "unpacked from its GCS (a runtime env's working_dir or py_modules): "
                           "the key went through Ray, readable by every client of the "
                           "cluster. Keep the key file outside the project directory (e.g. "
                           "~/.blockpoint/checkpoint_key, cluster.yaml's file_mounts) and "
                           "rotate the key", path=path)
    try:
        # O_NOFOLLOW is not used: file_mounts and secret volumes (Kubernetes) are symlinks.
        # O_NONBLOCK: a FIFO (or a device) at the path must be refused below, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        shown = _shown_unopened(path)
        raise KeyFileError(f"${KEY_FILE_ENV} names {shown}, which does not exist on this "
                           "node: put the key file at that path on every node (e.g. "
                           "cluster.yaml's file_mounts), mode 0600", path=shown) from None
    except OSError as exc:
        shown = _shown_unopened(path)
        raise KeyFileError(f"${KEY_FILE_ENV}: cannot open {shown}: {exc.strerror}",
                           path=shown) from None
    try:
        st = os.fstat(fd)  # of the file opened, not of whatever the path names later
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"${KEY_FILE_ENV}: {path!r} is not a regular file",
                               path=path, mode=mode)
        if st.st_uid != os.geteuid():
            raise KeyFileError(
                f"${KEY_FILE_ENV}: {path!r} is owned by uid {st.st_uid}, not by this "
                f"process's user (uid {os.geteuid()}): whoever owns a key file chooses the "
                f"key; chown it to the user Ray runs as", path=path, mode=mode)
        if mode & 0o077:
            raise KeyFileError(
                f"${KEY_FILE_ENV}: {path!r} is accessible by its group or others (mode "
                f"{mode:04o}); a checkpoint key must be private to its owner: "
                f"chmod 600 {path}", path=path, mode=mode)
        data = os.read(fd, _MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"${KEY_FILE_ENV}: cannot read {path!r}: {exc.strerror}",
                           path=path) from None
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"${KEY_FILE_ENV}: {path!r} is larger than {_MAX_KEY_FILE} bytes: "
                           "not a key file", path=path, mode=mode)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise KeyFileError(f"${KEY_FILE_ENV}: {path!r} is not UTF-8 text (keys are the "
                           "UTF-8 bytes of a string)", path=path, mode=mode) from None
    keys = [line.strip().encode() for line in text.splitlines() if line.strip()]
    if not keys:
        raise KeyFileError(f"${KEY_FILE_ENV}: {path!r} is empty: write the key in it",
                           path=path, mode=mode)
    return KeyRing(keys[0], tuple(keys[1:]))


def resolve_keys(key: KeySetting = None, *,
                 environ: Mapping[str, str] | None = None) -> KeyRing | None:
    """The key ring to use: from ``key`` when given, else from the environment.

    ``key`` may be a :class:`KeyRing` (returned as is), one key (``bytes`` or ``str``, UTF-8),
    or a sequence of keys whose first is the current one. ``None`` reads
    :data:`KEY_FILE_ENV` (the file, read now), :data:`KEY_ENV` and :data:`OLD_KEYS_ENV` from
    ``environ`` (default ``os.environ``, read now). Returns ``None`` when no key is
    configured.

    Raises:
        KeySettingError: (a ``ValueError``) an empty key, a ``str`` key that is not valid
            UTF-8 (an environment value with bytes that are not), or old keys configured
            without a current key. The message names the setting, never the key.
        TypeError: a key that is neither bytes nor str.
    """
    if isinstance(key, KeyRing):
        return key
    if key is None:
        env = os.environ if environ is None else environ
        current = env.get(KEY_ENV, "")
        old = tuple(k for item in env.get(OLD_KEYS_ENV, "").split(",") if item.strip()
                    for k in env_keys(item, f"${OLD_KEYS_ENV}"))
        path = env.get(KEY_FILE_ENV, "")
        if path:
            if current:
                raise KeySettingError(f"both ${KEY_FILE_ENV} and ${KEY_ENV} are set: set one "
                                      f"(${KEY_FILE_ENV} on a Ray cluster)")
            ring = read_key_file(path)
            return KeyRing(ring.current, (*ring.old, *old)) if old else ring
        if not current:
            if old:
                raise KeySettingError(f"${OLD_KEYS_ENV} is set but ${KEY_ENV} is not: set "
                                      "the current key (checkpoints are written with it)")
            return None
        first, *raw = env_keys(current, f"${KEY_ENV}")
        return KeyRing(first, (*raw, *old))
    if isinstance(key, (bytes, bytearray, str)):
        return KeyRing(_as_key(key, "key"))
    keys = [_as_key(k, "key") for k in key]
    if not keys:
        raise KeySettingError("an empty sequence of keys is not a key")
    return KeyRing(keys[0], tuple(keys[1:]))
