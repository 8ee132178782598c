"""ARI REST client: one httpx client, errors sorted for the policy layer.

ARI answers errors as `{"message": "..."}` (and `{"error": ...}` for a few
allocation failures). Those bodies are kept in the raised `AriError`, so the
admin sees what Asterisk said, not just a status code.
"""

from __future__ import annotations

from typing import Any

import httpx

from vagent.services.resilience import DependencyError, ErrorKind


class AriError(DependencyError):
    def __init__(self, message: str, kind: ErrorKind, status: int | None = None) -> None:
        super().__init__(message, kind)
        self.status = status


def ari_root(url: str) -> str:
    """Accept both http://host:8088 and http://host:8088/ari as VAGENT_ARI_URL."""
    url = url.rstrip("/")
    return url if url.endswith("/ari") else f"{url}/ari"


class AriClient:
    def __init__(self, url: str, user: str, password: str, timeout_s: float = 2.0) -> None:
        self.root = ari_root(url)
        self._http = httpx.AsyncClient(
            base_url=self.root, auth=httpx.BasicAuth(user, password), timeout=timeout_s
        )

    async def request(self, method: str, path: str, **params: Any) -> Any:
        try:
            response = await self._http.request(method, path, params=params or None)
        except httpx.TimeoutException as exc:
            raise AriError(
                f"ARI at {self.root} did not answer in time", ErrorKind.TRANSIENT
            ) from exc
        except httpx.TransportError as exc:
            raise AriError(f"ARI unreachable at {self.root}: {exc}", ErrorKind.TRANSIENT) from exc
        if response.status_code >= 400:
            raise _error_from(response, self.root)
        return response.json() if response.content else None

    async def asterisk_info(self) -> dict[str, Any]:
        info = await self.request("GET", "/asterisk/info")
        if not isinstance(info, dict) or "system" not in info:
            raise AriError(
                f"{self.root}/asterisk/info is not ARI: check VAGENT_ARI_URL",
                ErrorKind.PERMANENT,
                200,
            )
        return info

    async def aclose(self) -> None:
        await self._http.aclose()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)
    return str(body)


def _error_from(response: httpx.Response, root: str) -> AriError:
    status = response.status_code
    said = _message(response)
    if status == 401:
        return AriError(
            "ARI refused the credentials (401): check VAGENT_ARI_USER and VAGENT_ARI_PASSWORD "
            "against ari.conf",
            ErrorKind.PERMANENT,
            status,
        )
    if status == 404 and response.request.url.path.endswith("/asterisk/info"):
        return AriError(
            f"no ARI at {root} (404): check VAGENT_ARI_URL and that http.conf and ari.conf "
            "are enabled",
            ErrorKind.PERMANENT,
            status,
        )
    kind = ErrorKind.TRANSIENT if status >= 500 else ErrorKind.REJECTED
    request = response.request
    return AriError(f"ARI {request.method} {request.url.path}: {status} {said}", kind, status)
