"""What a Dataflow launch needs, checked in seconds before anything is submitted: credentials, a network route to
Google Cloud, the buckets the job writes to and the model version staged for the workers. Each check has a short
timeout and fails with a ``LaunchError`` saying what is missing and where to set it; without them Beam's own
clients retry for minutes (the metadata server, Cloud Storage uploads) and a launch looks hung.
"""
from __future__ import annotations

from typing import Any

from inference_pipeline.runtime.staging import split_gcs, staged_digest
from model_handlers.model_version import ModelVersion

PROBE_TIMEOUT_S = 10.0
CLOUD_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class LaunchError(ConnectionError):
    """A launch that cannot succeed, found before submitting; the message says which requirement is missing."""


def credentials(no_auth: bool = False) -> Any:
    """Application Default Credentials (anonymous with Beam's ``no_auth``, which a local API stand-in takes)."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError

    if no_auth:
        return AnonymousCredentials()
    try:
        return google.auth.default(scopes=list(CLOUD_SCOPES))[0]
    except DefaultCredentialsError as exc:
        raise LaunchError(
            "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service account key, run "
            f"`gcloud auth application-default login`, or launch from Google Cloud ({first_line(exc)})") from None


def check_network(found: Any) -> None:
    """Obtain an access token within ``PROBE_TIMEOUT_S``: proves a route to Google Cloud and credentials it takes."""
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import RefreshError, TransportError
    from google.auth.transport.requests import Request

    if isinstance(found, AnonymousCredentials):
        return
    transport = Request()

    def request(*args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = min(kwargs.get("timeout") or PROBE_TIMEOUT_S, PROBE_TIMEOUT_S)
        return transport(*args, **kwargs)

    try:
        found.refresh(request)
    except TransportError as exc:
        raise LaunchError(f"no network route to Google Cloud: could not reach its token service within "
                          f"{PROBE_TIMEOUT_S:.0f} s ({first_line(exc)})") from None
    except RefreshError as exc:
        raise LaunchError(f"Google Cloud refused the credentials ({first_line(exc)}): renew them or set "
                          "GOOGLE_APPLICATION_CREDENTIALS to a valid key") from None


def storage_client(project: str, found: Any) -> Any:
    from google.cloud import storage

    return storage.Client(project=project, credentials=found)


def _retry() -> Any:
    """Cloud Storage's retries of transient errors, for ``PROBE_TIMEOUT_S`` in all (not its two minutes)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(PROBE_TIMEOUT_S)


def check_bucket(client: Any, location: str, field: str) -> None:
    """The bucket of ``location`` (a ``gs://`` path set by ``field``) exists and these credentials may see it."""
    from google.api_core.exceptions import Forbidden, GoogleAPICallError, RetryError

    bucket = split_gcs(location)[0]
    try:
        found = client.lookup_bucket(bucket, timeout=PROBE_TIMEOUT_S, retry=_retry())
    except Forbidden as exc:
        raise LaunchError(f"{field}: no access to bucket gs://{bucket} ({first_line(exc)}): grant the launching "
                          "and worker identities roles/storage.objectAdmin on it") from None
    except (GoogleAPICallError, RetryError, OSError) as exc:
        raise LaunchError(f"{field}: could not reach Cloud Storage for gs://{bucket} within "
                          f"{PROBE_TIMEOUT_S:.0f} s ({first_line(exc)})") from None
    if found is None:
        raise LaunchError(f"{field}: bucket gs://{bucket} does not exist: create it in the job's region "
                          f"(gcloud storage buckets create gs://{bucket} --location REGION) or set another")


def check_staged(client: Any, version: ModelVersion, uri: str, stage_command: str) -> None:
    """The copy at ``uri`` is ``version``: its manifest has the digest the registry recorded."""
    from google.api_core.exceptions import GoogleAPICallError, RetryError

    try:
        digest = staged_digest(uri, client, PROBE_TIMEOUT_S, _retry())
    except (GoogleAPICallError, RetryError, OSError) as exc:
        raise LaunchError(f"could not read the staged model at {uri} ({first_line(exc)})") from None
    if digest is None:
        raise LaunchError(f"model {version.name} v{version.version} is not staged at {uri}: the workers read it "
                          f"there; stage it with `{stage_command}`")
    if digest != version.manifest_sha256:
        raise LaunchError(f"the model staged at {uri} is not {version.name} v{version.version} as the registry "
                          f"records it (its manifest differs): stage it again with `{stage_command}`")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
