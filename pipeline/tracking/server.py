"""Where MLflow runs go (the tracking URI) and whether a tracking server answers.

Plain HTTP, no mlflow import: a down server must fail a stage in seconds, before any training.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from urllib.parse import urlparse

DEFAULT_URI = "sqlite:///mlflow.db"
URI_ENV = "MLFLOW_TRACKING_URI"


class TrackingServerError(ConnectionError):
    """The configured MLflow tracking server does not answer."""


def tracking_uri(uri: str | None = None) -> str:
    """The store to use: `uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`."""
    return uri or os.environ.get(URI_ENV) or DEFAULT_URI


def check_tracking_server(uri: str | None = None, timeout: float = 3.0) -> None:
    """Fails fast if an http(s) tracking server does not answer its /health endpoint.

    Local stores (sqlite, file) need no server and always pass.

    Raises:
        TrackingServerError: naming the URI and the two ways to fix it.
    """
    uri = tracking_uri(uri)
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err))
    raise TrackingServerError(
        f"MLflow tracking server {uri} is unreachable ({reason}); start it "
        f"(mlflow server --host {urlparse(uri).hostname} --port {urlparse(uri).port or 5000} "
        f"--backend-store-uri sqlite:///mlflow.db) or unset {URI_ENV} to log to the local "
        f"{DEFAULT_URI}"
    )
