"""Object-store credentials from the node: the shared credentials file of the AWS chain.

Why this exists: on a Ray cluster a secret must never travel through Ray - a job's or an
actor's ``runtime_env`` is kept in Ray's job table and shown by the dashboard and the state
API (``ray list jobs --detail``). So every process finds its object-store credentials on its
own node. obstore (the Rust ``object_store`` crate) reads the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``), web identity
(``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``), ECS task roles and the instance
metadata service (the instance profile), but not the shared credentials file that the AWS
CLI and boto3 read (``~/.aws/credentials``, or ``$AWS_SHARED_CREDENTIALS_FILE``, profile
``$AWS_PROFILE`` or ``default``). This module fills that gap with a credential provider
(obstore's ``credential_provider=`` callable), in the order of the AWS chain: the
environment first (left to obstore), then the shared credentials file, then web identity
and the instance profile (left to obstore).

The file is read again each time obstore asks (credentials are given a 5-minute life), so a
rotated file is picked up without a restart. Static keys only (``aws_access_key_id``,
``aws_secret_access_key``, optional ``aws_session_token``); a profile that assumes a role or
uses SSO is not followed - export its credentials (``aws configure export-credentials``) or
use an instance profile. Nothing here prints or logs a secret; the provider's repr names the
file and profile only.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import StoreConfigError
from .keys import shipped_by_ray

__all__ = ["SharedCredentialsFile", "s3_credential_provider"]

#: How long obstore keeps credentials from the file before it asks again.
_LIFE = timedelta(minutes=5)

#: Variables that make obstore's own chain find credentials before the shared file would.
_CHAIN_FIRST = ("AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


class SharedCredentialsFile:
    """An obstore S3 credential provider reading one profile of a shared credentials file.

    Attributes:
        path: the credentials file.
        profile: the profile (section) read.
    """

    def __init__(self, path: str, profile: str) -> None:
        self.path = path
        self.profile = profile

    def __repr__(self) -> str:
        return f"SharedCredentialsFile(path={self.path!r}, profile={self.profile!r})"

    def read(self) -> dict[str, str] | None:
        """The profile's static keys, or ``None`` when the file or profile has none.

        Raises:
            StoreConfigError: the file exists but cannot be read or parsed (the message
                names the file and profile, never a value).
        """
        parser = configparser.RawConfigParser()
        try:
            with open(self.path, encoding="utf-8") as f:
                parser.read_file(f)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, configparser.Error) as exc:
            raise StoreConfigError(f"cannot read the AWS shared credentials file "
                                   f"{self.path!r}: {type(exc).__name__}") from None
        if not parser.has_section(self.profile):
            return None
        sec = parser[self.profile]
        key_id, secret = sec.get("aws_access_key_id", ""), sec.get("aws_secret_access_key", "")
        if not (key_id.strip() and secret.strip()):
            return None
        out = {"access_key_id": key_id.strip(), "secret_access_key": secret.strip()}
        token = sec.get("aws_session_token", "").strip()
        if token:
            out["token"] = token
        return out

    def __call__(self) -> dict[str, Any]:
        """obstore's callback: the credentials, valid for a few minutes.

        Raises:
            StoreConfigError: the profile's keys are gone from the file since the store was
                configured.
        """
        creds = self.read()
        if creds is None:
            raise StoreConfigError(f"no aws_access_key_id/aws_secret_access_key in profile "
                                   f"{self.profile!r} of {self.path!r} any more")
        return {"token": None, **creds, "expires_at": datetime.now(UTC) + _LIFE}


def _credentials_path(named: str) -> str:
    """The shared credentials file to read: ``named`` (``$AWS_SHARED_CREDENTIALS_FILE``,
    ``~`` expanded as the AWS CLI does) or ``~/.aws/credentials``.

    Refused as the key file is (``blockstore/keys.py``): a relative path (it resolves in
    whatever directory a worker runs in - under Ray, the job's working_dir, shipped through
    Ray's GCS) and a file in a package Ray unpacked (``ray job submit --working-dir`` with
    the file in the project): the secret went through Ray.

    Raises:
        StoreConfigError: naming the variable and why; a relative value is not shown (it may
            be a secret pasted in the variable), the file's content never.
    """
    var = "$AWS_SHARED_CREDENTIALS_FILE"
    path = os.path.expanduser(named) if named else os.path.join(
        os.path.expanduser("~"), ".aws", "credentials")
    if named and not os.path.isabs(path):
        raise StoreConfigError(
            f"{var} is not an absolute path (<{len(named)} characters, not shown>): give "
            "the absolute path of the credentials file on the node (a relative one resolves "
            "in whatever directory a worker runs in - under Ray, the job's working_dir, "
            "which Ray ships through its GCS), or unset it for ~/.aws/credentials")
    shipped = shipped_by_ray(path)
    if shipped:
        what = var if named else "~/.aws/credentials"
        raise StoreConfigError(
            f"{what}: {path!r} lies in {shipped!r}, a package Ray unpacked from its GCS (a "
            "runtime env's working_dir or py_modules): the object-store secret went through "
            "Ray, readable by every client of the cluster. Keep the credentials file outside "
            "the project directory (e.g. ~/.aws/credentials on every node, cluster.yaml's "
            "file_mounts) and rotate the keys in it")
    return path


def s3_credential_provider(environ: Mapping[str, str] | None = None
                           ) -> SharedCredentialsFile | None:
    """The provider to give obstore's ``S3Store``, or ``None`` to leave obstore's chain alone.

    ``None`` when the environment already names credentials obstore finds first (static
    keys, web identity, a container role), or when the shared credentials file has no static
    keys for the ``default`` profile (obstore then tries the instance profile).

    Raises:
        StoreConfigError: ``$AWS_PROFILE`` names a profile the file has no static keys for
            (as the AWS CLI refuses an unknown profile): the store is never opened with
            another identity than the one chosen. Or the file would be read from a relative
            path or from a package Ray shipped (:func:`_credentials_path`).
    """
    env = os.environ if environ is None else environ
    if any(env.get(k) for k in _CHAIN_FIRST):
        return None
    path = _credentials_path(env.get("AWS_SHARED_CREDENTIALS_FILE", ""))
    chosen = env.get("AWS_PROFILE") or ""
    provider = SharedCredentialsFile(path, chosen or "default")
    if provider.read() is not None:
        return provider
    if chosen:  # an identity the operator named: never fall back to the instance's own
        raise StoreConfigError(
            f"$AWS_PROFILE is {chosen!r}, but the shared credentials file {path!r} has no "
            f"static keys (aws_access_key_id/aws_secret_access_key) for that profile (missing, "
            f"a typo, or a role/SSO profile, which is not followed): export its credentials "
            f"(aws configure export-credentials --profile {chosen}) or unset AWS_PROFILE to "
            f"use the node's instance profile")
    return None
