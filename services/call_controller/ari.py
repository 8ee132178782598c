"""ARI REST client: one httpx client, errors sorted for the policy layer.

ARI answers errors as `{"message": "..."}` (and `{"error": ...}` for a few
allocation failures). Those bodies are kept in the raised `AriError`, so the
admin sees what Asterisk said, not just a status code.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from vagent.services.resilience import Dependency, DependencyError, ErrorKind, Policy

log = logging.getLogger("vagent.ari")

ARI_POLICY = Policy(
    name="ari",
    timeout_s=2.0,
    attempts=2,
    backoff_initial_s=0.05,
    backoff_max_s=0.3,
    fail_max=5,
    reset_timeout_s=30.0,
)


MAX_SAID = 200  # characters of a response kept in an AriError, as for rtpengine's errors


class AriError(DependencyError):
    def __init__(self, message: str, kind: ErrorKind, status: int | None = None) -> None:
        super().__init__(message, kind)
        self.status = status


def ari_root(url: str) -> str:
    """Accept both http://host:8088 and http://host:8088/ari as VAGENT_ARI_URL."""
    url = url.rstrip("/")
    return url if url.endswith("/ari") else f"{url}/ari"


class AriClient:
    """ARI's REST side. `request` is one raw attempt (health probes use it);
    the call-flow methods go through the policy layer, with ids chosen here so
    that a retried create cannot make a second bridge or channel."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        timeout_s: float = 2.0,
        dependency: Dependency | None = None,
    ) -> None:
        self.root = ari_root(url)
        self.dependency = dependency or Dependency(ARI_POLICY)
        self._http = httpx.AsyncClient(
            base_url=self.root, auth=httpx.BasicAuth(user, password), timeout=timeout_s
        )

    async def call(self, method: str, path: str, **params: Any) -> Any:
        return await self.dependency.call(lambda: self.request(method, path, **params))

    async def answer(self, channel_id: str) -> None:
        await self.call("POST", f"/channels/{channel_id}/answer")

    async def create_bridge(self, bridge_id: str) -> dict[str, Any]:
        return dict(await self.call("POST", "/bridges", type="mixing", bridgeId=bridge_id))

    async def add_channels(self, bridge_id: str, *channel_ids: str) -> None:
        await self.call("POST", f"/bridges/{bridge_id}/addChannel", channel=",".join(channel_ids))

    async def external_media(
        self, app: str, channel_id: str, external_host: str, fmt: str
    ) -> dict[str, Any]:
        return dict(
            await self.call(
                "POST",
                "/channels/externalMedia",
                app=app,
                channelId=channel_id,
                external_host=external_host,
                format=fmt,
            )
        )

    async def play(self, channel_id: str, media: str, playback_id: str) -> None:
        await self.call("POST", f"/channels/{channel_id}/play", media=media, playbackId=playback_id)

    async def stop_playback(self, playback_id: str) -> None:
        await self.call("DELETE", f"/playbacks/{playback_id}")

    async def hangup(self, channel_id: str) -> None:
        await self.call("DELETE", f"/channels/{channel_id}")

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.call("DELETE", f"/bridges/{bridge_id}")

    async def continue_in_dialplan(self, channel_id: str) -> None:
        await self.call("POST", f"/channels/{channel_id}/continue")

    async def hand_back(self, channel_id: str) -> None:
        """Send a caller we cannot serve back to the dialplan: one plain request, never raises.

        Outside the breaker and the drill hook on purpose: while the breaker
        protects Asterisk from call-control traffic we cannot complete, a
        caller stuck in Stasis with nobody serving it is worse than one more
        request; and exactly one, no retries, so a sick Asterisk is not
        hammered. A failure is only logged: there is nothing better to do.
        """
        try:
            await self.request("POST", f"/channels/{channel_id}/continue")
        except Exception as exc:
            log.warning("could not hand %s back to the dialplan: %s", channel_id, exc)

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
        if not response.content:
            return None
        try:
            return response.json()
        except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError
            raise AriError(
                f"ARI {method} {path}: {response.status_code} but not JSON "
                f"({_said(response.text)!r}): is VAGENT_ARI_URL Asterisk's HTTP server?",
                ErrorKind.PERMANENT,
                response.status_code,
            ) from None

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


def _said(text: str) -> str:
    """Text from a response, fit for a log line and doctor's table: cut at
    MAX_SAID characters (one response must not put 100 kB in a log), line
    breaks, terminal escapes and lone surrogates shown as escapes."""
    cut = text.strip()[:MAX_SAID]
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in cut)


def _message(response: httpx.Response) -> str:
    """What Asterisk said: the `message` (or `error`) of a JSON body, else the text.
    RecursionError too: json.loads raises it, not a ValueError, on deep nesting."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return _said(response.text)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    return _said(str(body))


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
