"""Where the server is and how to authenticate: arguments first, then the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_URL = "http://127.0.0.1:8080"
API_KEY_HEADER = "OPEN-SANDBOX-API-KEY"
EXECD_PORT = 44772


@dataclass(frozen=True)
class ConnectionConfig:
    """The server's base URL (no trailing slash, no ``/v1``) and the API key, if any."""

    url: str
    api_key: str | None
    request_timeout: float = 30.0

    @classmethod
    def resolve(
        cls, url: str | None = None, api_key: str | None = None, request_timeout: float | None = None
    ) -> "ConnectionConfig":
        raw = url or os.environ.get("RUNBOX_URL") or DEFAULT_URL
        if "://" not in raw:
            raw = "http://" + raw
        raw = raw.rstrip("/")
        if raw.endswith("/v1"):
            raw = raw[: -len("/v1")]
        key = api_key if api_key is not None else os.environ.get("RUNBOX_API_KEY")
        return cls(url=raw, api_key=key or None, request_timeout=request_timeout or 30.0)

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    def headers(self) -> dict[str, str]:
        return {API_KEY_HEADER: self.api_key} if self.api_key else {}

    def api(self, path: str) -> str:
        return f"{self.url}/v1{path}"
