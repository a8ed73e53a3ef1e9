"""The checkpoint key from a file (``$BLOCKPOINT_CHECKPOINT_KEY_FILE``, blockstore/keys.py),
and S3 credentials from the node's shared credentials file (blockstore/credentials.py): the
two ways a secret reaches a Ray worker without passing through Ray."""

from __future__ import annotations

import os
import pickle
import pwd
import threading
from pathlib import Path
from typing import Any

import pytest

from blockstore import (
    KEY_ENV,
    KEY_FILE_ENV,
    OLD_KEYS_ENV,
    KeyFileError,
    KeySettingError,
    StoreConfigError,
)
from blockstore.credentials import SharedCredentialsFile, s3_credential_provider
from blockstore.keys import resolve_keys


def _key_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "key"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_key_file_gives_the_ring(tmp_path: Path) -> None:
    path = _key_file(tmp_path, "current-key\n\n  old-1 \nold-2\n")
    ring = resolve_keys(environ={KEY_FILE_ENV: path})
    assert ring is not None
    assert ring.current == b"current-key" and ring.old == (b"old-1", b"old-2")
    ring = resolve_keys(environ={KEY_FILE_ENV: path, OLD_KEYS_ENV: "old-3"})
    assert ring is not None and ring.old == (b"old-1", b"old-2", b"old-3")


def test_key_file_read_at_every_resolution(tmp_path: Path) -> None:
    path = _key_file(tmp_path, "first\n")
    env = {KEY_FILE_ENV: path}
    assert resolve_keys(environ=env).current == b"first"  # type: ignore[union-attr]
    Path(path).write_text("second\nfirst\n")  # rotated in place
    ring = resolve_keys(environ=env)
    assert ring is not None and ring.current == b"second" and ring.old == (b"first",)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o601])
def test_key_file_open_to_others_refused(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, "SEKRIT-key-material\n", mode)
    with pytest.raises(KeyFileError) as err:
        resolve_keys(environ={KEY_FILE_ENV: path})
    assert err.value.path == path and err.value.mode == mode
    assert f"{mode:04o}" in str(err.value) and f"chmod 600 {path}" in str(err.value)
    assert "SEKRIT" not in str(err.value) and "SEKRIT" not in repr(err.value)
    again = pickle.loads(pickle.dumps(err.value))  # crosses Ray's process boundaries
    assert isinstance(again, KeyFileError) and again.path == path and again.mode == mode


def test_key_file_missing_empty_or_not_text_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(KeyFileError, match="does not exist on this node"):
        resolve_keys(environ={KEY_FILE_ENV: missing})
    with pytest.raises(KeyFileError, match="is empty"):
        resolve_keys(environ={KEY_FILE_ENV: _key_file(tmp_path, " \n\n")})
    bad = tmp_path / "bin"
    bad.write_bytes(b"\xff\xfe\x00key")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="not UTF-8"):
        resolve_keys(environ={KEY_FILE_ENV: str(bad)})
    with pytest.raises(KeyFileError, match="not a regular file"):
        resolve_keys(environ={KEY_FILE_ENV: str(tmp_path)})
    assert issubclass(KeyFileError, KeySettingError) and issubclass(KeyFileError, ValueError)


def test_env_key_is_stripped_like_the_key_file(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The same key text is the same key from $BLOCKPOINT_CHECKPOINT_KEY and from a key file
    (review 19, F2: the variable was used byte for byte, the file's lines stripped, so moving
    a key into a key file changed it). The raw value stays an old key, with one warning that
    names the variable, never the key."""
    import blockstore.keys as keys_mod

    getattr(keys_mod, "_warned_whitespace", set()).clear()  # warned once per process
    text = "SEKRIT-key\n"  # what `kubectl create secret --from-file` puts in the variable
    from_file = resolve_keys(environ={KEY_FILE_ENV: _key_file(tmp_path, text)})
    with caplog.at_level("WARNING", logger="blockstore.keys"):
        from_env = resolve_keys(environ={KEY_ENV: text})
        again = resolve_keys(environ={KEY_ENV: " SEKRIT-key\t"})
    assert from_env is not None and from_file is not None and again is not None
    assert from_env.current == from_file.current == again.current == b"SEKRIT-key"
    # checkpoints MACed before with the whitespace still verify (accepted, never written)
    assert from_env.old == (b"SEKRIT-key\n",) and again.old == (b" SEKRIT-key\t",)
    ours = [r for r in caplog.records if r.name == "blockstore.keys"]
    assert len(ours) == 1 and KEY_ENV in ours[0].getMessage()          # warned once
    assert "SEKRIT" not in ours[0].getMessage() and "retention" in ours[0].getMessage()
    # a value without whitespace: no old key added, no warning
    assert resolve_keys(environ={KEY_ENV: "SEKRIT-key"}).old == ()  # type: ignore[union-attr]
    # old keys are stripped the same way, each keeping its raw value after it
    ring = resolve_keys(environ={KEY_ENV: "cur", OLD_KEYS_ENV: " old-1 , old-2, ,"})
    assert ring is not None and ring.old == (b"old-1", b" old-1 ", b"old-2", b" old-2")
    with pytest.raises(KeySettingError, match="only whitespace") as err:
        resolve_keys(environ={KEY_ENV: " \n"})
    assert KEY_ENV in str(err.value)


def test_key_file_and_key_both_set_refused(tmp_path: Path) -> None:
    path = _key_file(tmp_path, "from-file\n")
    with pytest.raises(KeySettingError, match="both"):
        resolve_keys(environ={KEY_FILE_ENV: path, KEY_ENV: "from-env"})


def test_shared_credentials_file_read_for_s3(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIDDEFAULT\n"
                     "aws_secret_access_key = SEKRIT-default\n"
                     "[other]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=SEKRIT-o\n"
                     "aws_session_token = TOK\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds)}
    p = s3_credential_provider(env)
    assert isinstance(p, SharedCredentialsFile) and p.profile == "default"
    got = p()
    assert got["access_key_id"] == "AKIDDEFAULT" and got["secret_access_key"] == "SEKRIT-default"
    assert got["token"] is None and got["expires_at"] is not None
    assert "SEKRIT" not in repr(p)
    other = s3_credential_provider({**env, "AWS_PROFILE": "other"})
    assert other is not None and other()["token"] == "TOK"
    # The environment's own keys (and web identity) come first: obstore reads those itself.
    assert s3_credential_provider({**env, "AWS_ACCESS_KEY_ID": "x"}) is None
    assert s3_credential_provider({**env, "AWS_WEB_IDENTITY_TOKEN_FILE": "/t"}) is None
    # No file, or no static keys in the default profile: obstore's chain (the instance
    # profile).
    assert s3_credential_provider({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no")}) is None
    # A profile the operator named and the file lacks (a typo, a role or SSO profile): an
    # error naming it, never the instance's own identity instead (as the AWS CLI refuses).
    creds.write_text(creds.read_text() + "[writer]\nrole_arn = arn:aws:iam::1:role/w\n")
    for absent in ("absent", "writer"):
        with pytest.raises(StoreConfigError, match=repr(absent)) as err:
            s3_credential_provider({**env, "AWS_PROFILE": absent})
        assert "SEKRIT" not in str(err.value)
    with pytest.raises(StoreConfigError):  # named, and no file at all
        s3_credential_provider({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no"),
                                "AWS_PROFILE": "other"})



def test_shared_credentials_file_shipped_by_ray_or_relative_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 19, F8: a credentials file in a package Ray unpacked (``ray job submit
    --working-dir`` with the file in the project) or named by a relative path (resolved in
    the worker's cwd, the unpacked working_dir) is refused as the key file is, with an error
    naming the variable and why - never a secret. Before, both were read."""
    pkg = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0a1b"
    pkg.mkdir(parents=True)
    creds = pkg / "creds"
    creds.write_text("[default]\naws_access_key_id = AKIDSHIPPED\n"
                     "aws_secret_access_key = SEKRIT-shipped\n")
    creds.chmod(0o600)
    key = _key_file(pkg, "SEKRIT-key\n")
    with pytest.raises(KeyFileError, match="a package Ray"):  # the key file: as before
        resolve_keys(environ={KEY_FILE_ENV: key})
    with pytest.raises(StoreConfigError) as err:
        s3_credential_provider({"AWS_SHARED_CREDENTIALS_FILE": str(creds)})
    msg = str(err.value)
    assert "$AWS_SHARED_CREDENTIALS_FILE" in msg and "a package Ray unpacked" in msg
    assert "rotate" in msg and "SEKRIT" not in msg and "AKID" not in msg
    monkeypatch.chdir(pkg)
    for relative in ("creds", "./creds"):
        with pytest.raises(StoreConfigError, match="not an absolute path") as err:
            s3_credential_provider({"AWS_SHARED_CREDENTIALS_FILE": relative})
        assert "$AWS_SHARED_CREDENTIALS_FILE" in str(err.value)
        assert f"<{len(relative)} characters, not shown>" in str(err.value)
    # the same file outside a Ray package, and ~ expanded as the AWS CLI does, are read
    home = tmp_path / "home"
    (home / "aws").mkdir(parents=True)
    (home / "aws" / "credentials").write_text(creds.read_text())
    monkeypatch.setenv("HOME", str(home))
    p = s3_credential_provider({"AWS_SHARED_CREDENTIALS_FILE": "~/aws/credentials"})
    assert p is not None and p()["access_key_id"] == "AKIDSHIPPED"


def test_s3_store_opened_with_only_a_shared_credentials_file(s3_server: Any,
                                                            tmp_path: Path) -> None:
    """A process with no AWS variable but a credentials file reaches the store (before,
    obstore ignored the file and went to the instance metadata address)."""
    import os
    import subprocess
    import sys

    from s3server import CREDENTIALS

    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {CREDENTIALS['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    url = s3_server.url(f"shared-creds-{tmp_path.name}")
    code = ("import sys\nfrom blockstore import open_store\n"
            "with open_store(sys.argv[1], block_size=65536) as st:\n"
            "    print('leases', len(st.list_leases()))\n")
    proc = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert proc.returncode == 0 and "leases 0" in proc.stdout, proc.stderr[-2000:]


def test_a_fifo_at_the_key_file_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO (or a path swapped to one) must not hang every checkpoint: the open does not
    block, the check that it is a regular file refuses it."""
    fifo = str(tmp_path / "key")
    os.mkfifo(fifo, 0o600)
    got: list[object] = []

    def read() -> None:
        try:
            got.append(resolve_keys(environ={KEY_FILE_ENV: fifo}))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            got.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=60)  # a bound on the defect (a read blocked forever), not a wait for time
    if t.is_alive():  # unblock the reader so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join()
        pytest.fail("the key file read blocked on a FIFO")
    assert isinstance(got[0], KeyFileError) and "not a regular file" in str(got[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Whoever owns a key file chooses the key: a 0600 file of another user (read by root,
    as Ray often runs) is refused, naming both uids."""
    path = _key_file(tmp_path, "attacker-chosen-key\n")
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(KeyFileError, match="owned by uid") as err:
        resolve_keys(environ={KEY_FILE_ENV: path})
    assert "attacker" not in str(err.value)


def test_a_relative_key_file_path_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path resolves in whatever directory a worker runs in (under Ray, the
    job's unpacked working_dir): refused, even when a file is there."""
    _key_file(tmp_path, "k-relative\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyFileError, match="not an absolute path"):
        resolve_keys(environ={KEY_FILE_ENV: "key"})


@pytest.mark.parametrize("value", [
    "9c1f4e2ab07d44f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819",  # relative
    "/9c1f4e2ab07d44f1a2b3c4d5e6f7/08192a3b4c5d6e7f8091a2b3c4d5e6f70819",  # no such directory
    "/Zq9Xk3vT8mW2pR7nY4bL6cH1dF5gJ0sA+eKuIoPqM=",  # base64, its only '/' first (attack19 F5)
    "/" + "Zq9Xk3vT8mW2pR7nY4bL6cH1dF5gJ0sA" * 9,  # too long a name: ENAMETOOLONG, not ENOENT
])
def test_a_key_given_as_the_key_files_path_is_not_repeated(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key itself put in ``$BLOCKPOINT_CHECKPOINT_KEY_FILE`` (a slip) is refused without
    being echoed as the missing path, and redact_text masks it (review 19, R16)."""
    from blockstore.redact import redact_text

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(KEY_FILE_ENV, value)
    with pytest.raises(KeyFileError) as err:
        resolve_keys()
    assert value not in str(err.value) and value not in err.value.path
    assert "9c1f4e2a" not in str(err.value) and "Zq9Xk3vT" not in str(err.value)
    assert "Zq9Xk3vT" not in repr(err.value.__reduce__())
    assert value not in redact_text(f"mac under {value} failed")


def test_the_keyless_refusal_and_warning_name_the_key_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user reads when no key is set names the cluster way (the key file), not only
    the variable, which on a cluster people set through a runtime env (review 19)."""
    import warnings

    from blockstore import FileStore
    from stages import CheckpointedStageState, CheckpointKeyRequired
    from stages.checkpoint import mac as mac_module

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    with FileStore(tmp_path / "shared", 4096, shared=True) as st:
        css = CheckpointedStageState({"v": 1}, st.acquire("stage"))
        with pytest.raises(CheckpointKeyRequired, match=KEY_FILE_ENV):
            css.checkpoint()
    mac_module._warned_unauthenticated.clear()
    try:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            mac_module.warn_unauthenticated("lease 'x'")
    finally:
        mac_module._warned_unauthenticated.clear()
    assert any(KEY_FILE_ENV in str(w.message) for w in got), [str(w.message) for w in got]
