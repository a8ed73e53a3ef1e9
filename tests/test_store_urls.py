"""Store URLs: every form parses to what it names, round-trips, and every bad URL is refused
with a ``StoreURLError`` naming the wrong part, before any backend is touched. ``gs://`` and
``az://`` (no local server of either kind) are checked here for parsing and for what the
backend declares."""

from __future__ import annotations

import re

import pytest

from blockstore import (
    FileStore,
    MemoryStore,
    ObjectStore,
    StoreConfigError,
    StoreURL,
    StoreURLError,
    open_store,
    parse_store_url,
)


@pytest.mark.parametrize("spec, want", [
    ("/var/bp", StoreURL("file", "/var/bp")),
    ("relative/dir", StoreURL("file", "relative/dir")),
    ("file:///var/bp", StoreURL("file", "/var/bp")),
    ("file://localhost/var/bp", StoreURL("file", "/var/bp")),
    ("memory://x", StoreURL("memory", "x")),
    ("s3://my-bucket", StoreURL("s3", "my-bucket")),
    ("s3://my-bucket/a/b/", StoreURL("s3", "my-bucket", "a/b")),
    ("s3://b.c-d/p?region=eu-west-1&endpoint_url=http://127.0.0.1:9000/",
     StoreURL("s3", "b.c-d", "p", (("endpoint_url", "http://127.0.0.1:9000"),
                                   ("region", "eu-west-1")))),
    ("s3://bkt/p?concurrency=16&retries=0",
     StoreURL("s3", "bkt", "p", (("concurrency", "16"), ("retries", "0")))),
    ("gs://my_bucket/ckpt", StoreURL("gs", "my_bucket", "ckpt")),
    ("az://container-1/ckpt?account=acct01",
     StoreURL("az", "container-1", "ckpt", (("account", "acct01"),))),
])
def test_forms_parse(spec: str, want: StoreURL) -> None:
    got = parse_store_url(spec)
    assert got == want
    assert parse_store_url(got.to_url()) == got


@pytest.mark.parametrize("spec, part", [
    ("ftp://host/x", "scheme"),
    ("S4://bucket", "scheme"),
    ("file://", "path"),
    ("", "path"),
    ("s3://ab", "bucket"),
    ("s3://Upper", "bucket"),
    ("s3://-bad", "bucket"),
    ("s3://a..b", "bucket"),
    ("s3://192.168.1.1", "bucket"),
    ("s3://bucket:9000/x", "bucket"),
    ("s3://" + "a" * 64, "bucket"),
    ("s3://", "bucket"),
    ("az://bad--name/x?account=acct01", "container"),
    ("gs://UP/x", "bucket"),
    ("s3://key:secret@bucket/x", "credentials"),
    ("s3://bucket/x#frag", "fragment"),
    ("s3://bucket/a//b", "prefix"),
    ("s3://bucket/a/../b", "prefix"),
    ("s3://bucket/a b", "prefix"),
    ("s3://bucket/x?nope=1", "query key 'nope'"),
    ("s3://bucket/x?region=us-east-1&region=eu-west-1", "query key 'region'"),
    ("s3://bucket/x?region=", "query key 'region'"),
    ("s3://bucket/x?region=US_EAST", "query key 'region'"),
    ("s3://bucket/x?endpoint_url=ftp://h", "endpoint_url"),
    ("s3://bucket/x?endpoint_url=http://", "endpoint_url"),
    ("s3://bucket/x?endpoint_url=http://u:p@h:9000", "endpoint_url"),
    ("s3://bucket/x?endpoint_url=http://h:99999", "endpoint_url"),
    ("s3://bucket/x?concurrency=0", "query key 'concurrency'"),
    ("s3://bucket/x?retries=many", "query key 'retries'"),
    ("s3://bucket/x?account=acct01", "query key 'account'"),
    ("gs://bucket/x?region=us", "query key 'region'"),
    ("az://container/x", "query key 'account'"),
    ("az://container/x?account=NO", "query key 'account'"),
    ("s3://bucket/x?justakey", "query"),
    # A scheme without its '//', or a relative file:// URL: refused, not a local directory.
    ("s3:/bucket/x", "scheme"),
    ("s3:bucket/x", "scheme"),
    ("GS:/bucket", "scheme"),
    ("memory:/x", "scheme"),
    ("file:/var/bp", "scheme"),
    ("file://relative/dir", "path"),
])
def test_bad_urls_name_the_part(spec: str, part: str) -> None:
    with pytest.raises(StoreURLError) as err:
        open_store(spec)  # refused before any backend is built or contacted
    assert err.value.part == part, str(err.value)
    assert isinstance(err.value, StoreConfigError) and isinstance(err.value, ValueError)
    assert "secret" not in str(err.value) and "secret" not in err.value.url


def test_credentials_never_echoed() -> None:
    with pytest.raises(StoreURLError) as err:
        parse_store_url("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/x")
    assert err.value.part == "credentials"
    assert "wJalr" not in str(err.value) and "AKID" not in err.value.url
    with pytest.raises(StoreURLError) as err:
        parse_store_url("s3://bucket/x?endpoint_url=http://AKID:wJalr@h:9000")
    assert "wJalr" not in str(err.value)


def test_open_store_dispatches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with open_store(f"file://{tmp_path}/s", block_size=4096) as st:
        assert isinstance(st, FileStore)
    st = open_store("memory://urls-test")
    assert isinstance(st, MemoryStore)
    st.close()


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_object_schemes_declare_conditional_writes(scheme: str) -> None:
    caps = ObjectStore.capabilities
    assert caps.cross_process and caps.durable and caps.conditional_write
    assert caps.publish_on_flush
    url = parse_store_url(f"{scheme}://bucket-1/p" + ("?account=acct01" if scheme == "az"
                                                     else ""))
    assert url.is_object_store and url.prefix == "p"


@pytest.mark.parametrize("spec, says", [
    ("s3:/bucket/x", "did you mean 's3://bucket/x'?"),
    ("file:/var/bp", "did you mean 'file:///var/bp'?"),
    ("file://relative/dir", "file:// takes an absolute path (three slashes: "
                            "file:///relative/dir)"),
])
def test_mistyped_urls_create_nothing(tmp_path, monkeypatch, spec: str, says: str) -> None:  # type: ignore[no-untyped-def]
    """Such a URL used to become a FileStore in the working directory (``./s3:/bucket/x``,
    ``./relative/dir``); now it is refused with the fix in the message and nothing is
    created. Through the installed command as a user types it: one line, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreURLError, match=re.escape(says)):
        open_store(spec)
    exe = Path(sys.executable).with_name("blockpoint")
    for cmd in ("inspect", "verify", "gc"):
        proc = subprocess.run([str(exe), cmd, spec], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert proc.returncode == 2, (cmd, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and says in proc.stderr, (cmd, proc.stderr)
    assert list(tmp_path.iterdir()) == []


def test_relative_path_round_trips_as_a_path() -> None:
    u = parse_store_url("relative/dir")
    assert u.to_url() == "relative/dir" and parse_store_url(u.to_url()) == u
