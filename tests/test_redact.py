"""No error, log line, repr or pickled exception carries a secret (issue 18, credentials).

Every way a secret can reach a store URL - the user information of the URL (with a ``/``
in the secret, which RFC 3986 parsing reads as host, port and path), the user information
of ``endpoint_url``, an unknown query key, percent-encoded - is refused with a
``StoreURLError`` whose message, ``.url``, ``.part``, repr, pickle and formatted traceback
hold no form of the secret; so are the object client's translated errors when the client's
own text echoes a URL or a key, and the reprs of specs and ``@checkpointed`` configs.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from urllib.parse import quote, unquote

import pytest

from blockstore import StoreURLError, open_store, parse_store_url
from blockstore.objectclient import ObjectClient
from blockstore.redact import redact_text, redact_url

SECRETS = [
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # an AWS-shaped secret: '/'
    "abcDEF+ghiJKL+mnoPQR",                         # '+'
    "pa@ss/wo@rd",                                  # '@' and '/'
    "abc%2Fdef%2Fghi",                              # percent-encoded '/'
]


def _forms(secret: str) -> set[str]:
    """Every way the secret could show: as given, decoded, encoded."""
    return {s for s in {secret, unquote(secret), quote(secret, safe=""), quote(secret)}
            if len(s) >= 6}


def _urls(secret: str) -> list[str]:
    return [
        f"s3://AKIAEXAMPLE:{secret}@bucket/ckpt",
        f"s3://AKIAEXAMPLE:{secret}@bucket/ckpt?region=us-east-1",
        f"gs://user:{secret}@bucket/ckpt",
        f"az://acct:{secret}@container/ckpt?account=acct01",
        f"s3://bucket/ckpt?endpoint_url=http://AKIAEXAMPLE:{secret}@127.0.0.1:9000",
        f"s3://bucket/ckpt?endpoint_url=http://AKIAEXAMPLE:{quote(secret, safe='')}@h:9000",
        f"s3://bucket/ckpt?endpoint_url=https://{secret}@h",
        f"s3://bucket/ckpt?aws_secret_access_key={secret}",
        f"s3://bucket/ckpt?region=us-east-1&aws_secret_access_key={quote(secret, safe='')}",
        f"s3://bucket/ckpt?{secret}",
        f"s3://bucket/ckpt?token={secret}#frag",
    ]


def _assert_clean(text: str | bytes, secret: str) -> None:
    for form in _forms(secret):
        needle = form.encode() if isinstance(text, bytes) else form
        assert needle not in text, f"{form!r} leaked in {text!r}"


def _cases() -> list[tuple[str, str]]:
    return [(secret, url) for secret in SECRETS for url in _urls(secret)]


@pytest.mark.parametrize("secret, url", _cases())
def test_store_url_errors_never_carry_the_secret(secret: str, url: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(StoreURLError) as info:
        open_store(url)
    err = info.value
    for text in (str(err), repr(err), err.url, err.part, str(err.args)):
        _assert_clean(text, secret)
    blob = pickle.dumps(err)
    _assert_clean(blob, secret)
    back = pickle.loads(blob)
    assert (str(back), back.url, back.part) == (str(err), err.url, err.part)
    _assert_clean("".join(traceback.format_exception(err)), secret)
    with caplog.at_level(logging.ERROR):
        logging.getLogger("test_redact").exception("open failed: %s", err, exc_info=err)
    _assert_clean(caplog.text, secret)
    assert "***" in err.url


@pytest.mark.parametrize("secret", SECRETS)
def test_credentials_with_a_slash_are_refused_as_credentials(secret: str) -> None:
    with pytest.raises(StoreURLError) as info:
        parse_store_url(f"s3://AKIAEXAMPLE:{secret}@bucket/ckpt")
    assert info.value.part == "credentials"
    # the whole head is masked: what follows the last '@' may be the end of a secret
    assert info.value.url == "s3://***/ckpt" or info.value.url == "s3://***"
    with pytest.raises(StoreURLError) as info:
        parse_store_url(f"s3://bucket/x?endpoint_url=http://AKIAEXAMPLE:{secret}@h:9000")
    assert info.value.part == "endpoint_url"


#: Endpoints the parser cannot read as ``http(s)://user:pass@host``, each holding the
#: password ``Sup3rSecret`` (or its first part): a slash or both missing, a ``&``, ``#`` or
#: ``?`` in the password (the query / fragment split cuts it), encoded twice.
UNREADABLE_ENDPOINTS = [
    "http:/admin:Sup3rSecret@minio:9000",
    "http:admin:Sup3rSecret@minio:9000",
    "http://admin:Sup3rS&cret@minio:9000",
    "http://admin:Sup3rS#cret@minio:9000",
    "http://admin:Sup3rS?cret@minio:9000",
    "http%253A%252F%252Fadmin%253ASup3rSecret%2540minio",
    "https://minio:9000/admin:Sup3rSecret@x",
    "http://[::1:Sup3rSecret@minio]:9000",
]


@pytest.mark.parametrize("endpoint", UNREADABLE_ENDPOINTS)
def test_an_endpoint_that_fails_to_parse_is_never_shown(endpoint: str) -> None:
    """A refused URL shows only parts proven harmless: the raw text of an endpoint that
    did not parse as ``http(s)://HOST[:PORT][/PATH]`` is masked whole, wherever the
    refusal comes from (credentials, port, query, fragment, scheme of the endpoint)."""
    url = f"s3://bucket/x?region=us-east-1&endpoint_url={endpoint}"
    with pytest.raises(StoreURLError) as info:
        parse_store_url(url)
    err = info.value
    for text in (str(err), repr(err), err.url, err.part, repr(pickle.loads(pickle.dumps(err)))):
        assert "Sup3rS" not in text and "admin" not in text, text
    assert err.url.startswith("s3://bucket/x?region=us-east-1&endpoint_url=***"), err.url


def test_a_refusal_shows_the_harmless_parts() -> None:
    """What is proven harmless stays, so the message still points at the mistake."""
    with pytest.raises(StoreURLError) as info:
        parse_store_url("s3://bucket/a/b?endpoint_url=http://minio:9000&region=Bad_Region")
    assert info.value.url == "s3://bucket/a/b?endpoint_url=http://minio:9000&region=***"
    assert info.value.part == "query key 'region'"
    with pytest.raises(StoreURLError) as info:
        parse_store_url("s3:admin:Sup3rSecret@bucket")  # a mistyped scheme with credentials
    assert "Sup3rS" not in str(info.value) and info.value.part == "scheme"


def test_redaction_keeps_what_is_not_secret() -> None:
    url = "s3://my-bucket/a/pre@fix?endpoint_url=http://127.0.0.1:9000&region=us-east-1"
    assert redact_url(url) == url
    assert redact_url("/var/blockpoint") == "/var/blockpoint"
    assert parse_store_url("s3://my-bucket/a/pre@fix").prefix == "a/pre@fix"
    with pytest.raises(StoreURLError) as info:  # a port in the bucket: not credentials
        parse_store_url("s3://bucket:9000/x")
    assert info.value.part == "bucket"


@pytest.mark.parametrize("secret", SECRETS)
def test_client_error_translation_masks_echoed_urls_and_keys(
        secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", secret[::-1])
    client = ObjectClient(parse_store_url("s3://bucket/ckpt?endpoint_url=http://127.0.0.1:9"))
    try:
        echoes = [
            f"Generic S3 error: error sending request for url "
            f"(http://AKIAEXAMPLE:{secret}@127.0.0.1:9/bucket/ckpt/k)",
            f"status code: 403 Forbidden: signing with secret {secret}",
            f"request failed http://127.0.0.1:9/bucket/k?X-Amz-Signature={quote(secret)}"
            f"&X-Amz-Credential=AKIAEXAMPLE",
            f"mac key {secret[::-1]} rejected",
        ]
        for text in echoes:
            try:
                try:
                    raise RuntimeError(text)
                except RuntimeError as exc:
                    raise client._translate(exc, "k")  # as every request does
            except Exception as err:  # noqa: BLE001 - inspected below
                translated = err
            for shown in (str(translated), repr(translated), getattr(translated, "path", "")):
                _assert_clean(shown, secret)
                _assert_clean(shown, secret[::-1])
            formatted = "".join(traceback.format_exception(translated))
            _assert_clean(formatted, secret)
            _assert_clean(formatted, secret[::-1])
            _assert_clean(pickle.dumps(translated), secret)
            assert translated.__cause__ is None  # the client's text was not clean
    finally:
        client.close()


def test_clean_client_errors_stay_chained() -> None:
    client = ObjectClient(parse_store_url("s3://bucket/ckpt?endpoint_url=http://127.0.0.1:9"))
    try:
        exc = RuntimeError("status code: 500 Internal Server Error")
        err = client._translate(exc, "k")
        assert err.__cause__ is exc and "500" in str(err)
    finally:
        client.close()


def test_redact_text_masks_environment_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FQoGZXIvYXdzE/session+token")
    out = redact_text("token FQoGZXIvYXdzE/session+token expired")
    assert "FQoGZXIvYXdzE" not in out and "***" in out


def test_redact_text_masks_the_keys_as_used_when_stripped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are stripped of surrounding whitespace: the key in use (the stripped value) is
    masked, not only the value as written (review 19b, F14: it was shown in clear)."""
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", "Zm9vYmFyYmF6cXV1eC1rZXk\n")
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", "b2xkLWtleS1vbmU, b2xkLWtleS10d28")
    out = redact_text("bad key Zm9vYmFyYmF6cXV1eC1rZXk; tried b2xkLWtleS10d28 then "
                      "b2xkLWtleS1vbmU")
    assert out == "bad key ***; tried *** then ***", out


@pytest.mark.parametrize("secret", SECRETS)
def test_specs_and_checkpointed_configs_never_hold_a_secret_url(secret: str) -> None:
    from stages import StageSpec, checkpointed
    url = f"s3://AKIAEXAMPLE:{secret}@bucket/ckpt"
    with pytest.raises(StoreURLError) as info:
        StageSpec("s1", dict, url)
    _assert_clean(str(info.value), secret)
    with pytest.raises(StoreURLError) as info:
        @checkpointed(store=url)
        class Counter:
            def __init__(self) -> None:
                self.state = 0
    _assert_clean(str(info.value), secret)
    _assert_clean(pickle.dumps(info.value), secret)



def test_redact_text_masks_the_secrets_read_from_files(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key file's keys (current and old) and the shared credentials file's secret and
    token are masked like the environment's: on a cluster they are the only copies."""
    for name in ("BLOCKPOINT_CHECKPOINT_KEY", "BLOCKPOINT_CHECKPOINT_OLD_KEYS",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    key_file = tmp_path / "checkpoint_key"
    key_file.write_text("current-key/with+slash\nolder-key-0123\n")
    key_file.chmod(0o600)
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n"
                     "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG\n"
                     "aws_session_token = FQoGZXIvYXdzEtoken\n")
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", str(key_file))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    out = redact_text("mac under current-key/with+slash or older-key-0123 failed; "
                      "signing with wJalrXUtnFEMI/K7MDENG and FQoGZXIvYXdzEtoken as AKIAEXAMPLE")
    for secret in ("current-key/with+slash", "older-key-0123", "wJalrXUtnFEMI",
                   "FQoGZXIvYXdzEtoken"):
        assert secret not in out
    assert "AKIAEXAMPLE" in out and out.count("***") == 4
    key_file.chmod(0o644)  # a key file refused where it is used: redaction still answers
    assert "older-key-0123" in redact_text("older-key-0123")


#: Credential variables obstore 0.12 reads beyond the common ones (its AWS, Azure and GCS
#: configuration keys): each is a secret for the job check and for redaction.
OBSTORE_SECRETS = ["AWS_TOKEN", "AWS_SSE_CUSTOMER_KEY_BASE64", "AZURE_STORAGE_MASTER_KEY",
                   "AZURE_STORAGE_CLIENT_SECRET", "AZURE_STORAGE_TOKEN",
                   "AZURE_FABRIC_SESSION_TOKEN", "GOOGLE_BEARER_TOKEN"]


@pytest.mark.parametrize("name", OBSTORE_SECRETS)
def test_every_obstore_credential_variable_is_a_secret(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from blockpoint.demo_cluster import secrets_in_job_runtime_env

    job = {RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps(
        {"runtime_env": {"env_vars": {name: "s3cr3t"}}, "metadata": {}})}
    assert secrets_in_job_runtime_env(job) == [name]  # a job carrying it is refused
    monkeypatch.setenv(name, "s3cr3t-Qx81")
    assert "s3cr3t-Qx81" not in redact_text("the client said: s3cr3t-Qx81 is wrong")


def test_the_memory_store_refusals_never_show_a_secret_in_the_url() -> None:
    """Found by a review: ``memory://u:SECRET@x``, ``?token=SECRET`` and ``#SECRET`` were
    echoed whole by the memory-store refusal (the CLI's ``create=False``) and kept in its
    ``path``."""
    from blockstore import StorePathError, open_store

    for url in ("memory://u:SECRET1@nowhere-r", "memory://nowhere-r?token=SECRET1",
                "memory://nowhere-r#SECRET1"):
        try:
            open_store(url, create=False)
        except StorePathError as exc:
            assert "SECRET1" not in str(exc) and "SECRET1" not in str(exc.path), exc
        else:
            raise AssertionError(f"{url} was opened")
