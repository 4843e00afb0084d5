"""A synchronous client of the policy server (also talks to openpi servers for plain inference).

``PolicyClient`` keeps one WebSocket connection (one robot, one env id on the server), reconnects
with exponential backoff when the server goes away, and raises clear errors: an error reply is a
``RemoteError``, a refused API key an ``AuthenticationError``, a server that stays gone a
``ServerUnavailableError``. Not for concurrent use from several threads (calls are serialized).

Real-time chunking requests carry a :class:`~envactor.chunking.GuidanceRequest` for the robot
(built here from ``prev_action``/``est_delay``/``executed``/``rtc``, checked before sending, or
given whole). For a policy with observation history (metadata ``n_obs_steps > 1``) call
:meth:`PolicyClient.observe` on every control step that does not call ``infer``: the server then
sees every step (openpi's protocol has no such frame; without it the history holds only the
observations of the requests).

openpi servers: a server whose metadata has no envactor ``protocol`` field (``envactor-ws/...``)
is taken for an openpi server (:attr:`PolicyClient.openpi_server`), which reads every frame as
an observation. It is sent observations only: ``reset``, ``set_seed``, ``episode_start`` and
``episode_end`` send nothing and answer ``{"ok": True, "ctrl": name, "sent": False}`` (its
policy state and noise stay the server's own), ``observe`` does the same unless the metadata
declares ``n_obs_steps > 1`` (then it raises, since the server cannot record the step), and
``infer`` with a real-time chunking request raises :class:`UnsupportedRequestError`. A text
frame (openpi's way of sending an error, after which it closes the connection) raises
``RemoteError`` with the server's text; the next call reconnects.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from envactor.chunking.request import GuidanceRequest
from envactor.runtime.serving.wire import CLIENT_HEADER, PROTOCOL, packb, unpackb

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

__all__ = [
    "AuthenticationError",
    "PolicyClient",
    "RemoteError",
    "ServerUnavailableError",
    "UnsupportedRequestError",
    "is_envactor_metadata",
]

DEFAULT_MAX_SIZE = 16 * 2**20
ENVACTOR_PROTOCOL_PREFIX = "envactor-ws/"
"""How the ``protocol`` field of an envactor server's metadata starts (openpi's has none)."""


class ServerUnavailableError(ConnectionError):
    """No policy server answered (after every reconnect attempt)."""


class AuthenticationError(PermissionError):
    """The server refused the handshake: missing or wrong API key (HTTP 401)."""


class UnsupportedRequestError(RuntimeError):
    """A call the server's protocol cannot carry (an openpi server has no envactor frames)."""


class RemoteError(RuntimeError):
    """An error reply ``{"error": {"type", "message"}}`` (or an openpi server's text frame)."""

    def __init__(self, kind: str, message: str, uri: str = "") -> None:
        super().__init__(f"{kind} from policy server {uri}: {message}")
        self.kind = kind
        self.message = message


def is_envactor_metadata(meta: Mapping[str, Any]) -> bool:
    """True when a metadata frame is an envactor server's (its ``protocol`` is ``envactor-ws/N``);
    False for an openpi server, whose metadata has no such field."""
    protocol = meta.get("protocol")
    return isinstance(protocol, str) and protocol.startswith(ENVACTOR_PROTOCOL_PREFIX)


def _version_kwargs(connect: Any) -> dict[str, Any]:
    """Keyword arguments that only some websockets versions take: no proxy from the environment
    (>= 15), and a connection kept outside a ``with`` block said so (>= 17)."""
    params = inspect.signature(connect).parameters
    return {k: v for k, v in (("proxy", None), ("legacy", True)) if k in params}


def _plain(value: Any) -> Any:
    """Torch tensors become numpy arrays; everything else is sent as is."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return value


class PolicyClient:
    """One connection to a policy server.

    Args:
        host: server host, or a full ``ws://host:port`` URI.
        port: server port (ignored when ``host`` is a URI).
        api_key: sent as ``Authorization: Api-Key <key>``.
        timeout: seconds to wait for a handshake or a reply.
        retries: connection attempts before ``ServerUnavailableError``.
        backoff_s: first wait between attempts, doubled each time up to ``max_backoff_s``.
        max_size: largest reply accepted, in bytes.
        connect: connect now (reads the metadata); else on first use.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 6,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        max_size: int = DEFAULT_MAX_SIZE,
        connect: bool = True,
    ) -> None:
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        self.uri = host if "://" in host else f"ws://{host}:{port}"
        self.api_key = api_key
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_size = int(max_size)
        self._conn: ClientConnection | None = None
        self._metadata: dict[str, Any] | None = None
        self._lock = threading.Lock()
        if connect:
            self._ensure()

    # ------------------------------------------------------------------ public
    @property
    def metadata(self) -> dict[str, Any]:
        """The server's metadata frame (policy name, input features, action shape, ...)."""
        if self._metadata is None:
            self._ensure()
        assert self._metadata is not None
        return self._metadata

    @property
    def openpi_server(self) -> bool:
        """True when the server's metadata has no envactor ``protocol`` field (an openpi server):
        it is then sent observations only (see the module docstring)."""
        return not is_envactor_metadata(self.metadata)

    def infer(
        self,
        obs: Mapping[str, Any],
        *,
        prev_action: Any = None,
        est_delay: int | None = None,
        executed: int | None = None,
        rtc: Mapping[str, Any] | None = None,
        guidance: GuidanceRequest | None = None,
    ) -> dict[str, Any]:
        """One observation (unbatched) -> ``{"actions": (H, A), "server_timing", ...}``.

        With ``prev_action`` (the unexecuted remainder (L, A) of the current chunk) and
        ``est_delay`` (d), the server runs real-time chunking; ``executed`` is s and ``rtc`` holds
        ``schedule``/``max_guidance_weight``/``jacobian``/``method``/``executor``. Or pass
        ``guidance``, a one-robot request. Arrays in the reply are read-only views of the
        received frame. An openpi server takes plain observations only: a real-time chunking
        request to one raises ``UnsupportedRequestError`` (nothing is sent).
        """
        executor = None
        omit: tuple[str, ...] = ()
        if (prev_action is not None or guidance is not None) and self.openpi_server:
            raise UnsupportedRequestError(
                f"policy server {self.uri} is an openpi server (its metadata has no envactor "
                "'protocol'): it takes plain observations only, so infer() cannot send "
                "prev_action=/guidance=; call infer(obs) and blend client-side (RemotePolicy "
                "does), or serve the policy with envactor serve"
            )
        if prev_action is not None:
            if guidance is not None:
                raise TypeError("PolicyClient.infer: give guidance= or prev_action=, not both")
            opts = dict(rtc or {})
            known = ("schedule", "max_guidance_weight", "jacobian", "method", "executor")
            unknown = sorted(set(map(str, opts)) - set(known))
            if unknown:
                raise ValueError(f"rtc: unknown options {unknown}; expected {sorted(known)}")
            executor = opts.pop("executor", None)
            if executor is not None:  # the named executor's method and jacobian, unless given
                omit = tuple(k for k in ("method", "jacobian") if k not in opts)
            if "max_guidance_weight" in opts:
                opts["beta"] = opts.pop("max_guidance_weight")
            horizon = int(self.metadata.get("action_shape", [len(prev_action)])[0])
            guidance = GuidanceRequest.build(
                [_plain(prev_action)], [int(est_delay or 0)], horizon=horizon,
                executed=executed, **opts,
            )  # fmt: skip
        return self._call(packb(infer_message(obs, guidance, executor, omit)))

    def observe(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """envactor control frame: record one step's observation (unbatched) in this robot's
        history on the server without asking for a chunk (policies with ``n_obs_steps > 1``;
        a no-op on the server otherwise).

        An openpi server has no such frame: nothing is sent (``"sent": False`` in the reply)
        unless its metadata declares ``n_obs_steps > 1``, which raises
        ``UnsupportedRequestError`` (dropping the step would silently change what the policy
        sees)."""
        if self.openpi_server and int(self.metadata.get("n_obs_steps") or 1) > 1:
            raise UnsupportedRequestError(
                f"policy server {self.uri} is an openpi server with n_obs_steps="
                f"{self.metadata.get('n_obs_steps')} in its metadata but no observe frame: the "
                "steps without infer() cannot reach its history; call infer() every step instead"
            )
        frame = {str(k): _plain(v) for k, v in obs.items()}
        frame["__ctrl__"] = "observe"
        return self._control("observe", frame)

    def episode_start(
        self, *, experiment: str = "", task: str = "", episode_id: int = 0
    ) -> dict[str, Any]:
        """envactor control frame: a new episode (the server resets this client's policy state).
        Nothing is sent to an openpi server."""
        frame = {"__ctrl__": "episode_start", "__experiment__": experiment, "__task__": task,
                 "__episode_id__": int(episode_id)}  # fmt: skip
        return self._control("episode_start", frame)

    def episode_end(self, success: bool = False) -> dict[str, Any]:
        """envactor control frame: the episode ended (state is reset too). Nothing is sent to
        an openpi server."""
        frame = {"__ctrl__": "episode_end", "__success__": bool(success)}
        return self._control("episode_end", frame)

    def reset(self) -> dict[str, Any]:
        """Reset this client's per-env state on the server (an ``episode_start`` frame; nothing
        is sent to an openpi server, whose state stays its own)."""
        return self.episode_start()

    def set_seed(self, seed: int) -> dict[str, Any]:
        """Seed this client's policy noise on the server (envactor control frame; nothing is
        sent to an openpi server, so its noise is not reproducible from here)."""
        return self._control("set_seed", {"__ctrl__": "set_seed", "seed": int(seed)})

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        self._drop()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _ensure(self) -> ClientConnection:
        """The open connection, connecting (with backoff) when there is none."""
        if self._conn is not None:
            return self._conn
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        open_ws: Any = connect  # the overloads depend on the websockets version

        headers = {CLIENT_HEADER: PROTOCOL}  # typed error replies from envactor's server
        if self.api_key is not None:
            headers["Authorization"] = f"Api-Key {self.api_key}"
        start, wait, last = time.monotonic(), self.backoff_s, "none"
        for attempt in range(self.retries):
            if attempt:
                time.sleep(wait)
                wait = min(2 * wait, self.max_backoff_s)
            try:
                conn = open_ws(
                    self.uri, additional_headers=headers, open_timeout=self.timeout,
                    max_size=self.max_size, compression=None, **_version_kwargs(connect),
                )  # fmt: skip
            except InvalidStatus as exc:
                code = exc.response.status_code
                if code == 401:
                    why = "no API key given" if self.api_key is None else "wrong API key"
                    raise AuthenticationError(
                        f"policy server at {self.uri} refused the connection: HTTP 401 ({why})"
                    ) from None
                last = str(exc)
                if code != 503:  # only "too many connections" is worth waiting out
                    break
                continue
            except (OSError, WebSocketException) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            try:
                meta = self._decode(conn.recv(timeout=self.timeout))
            except (OSError, WebSocketException, ValueError) as exc:
                conn.close()
                last = f"no metadata frame: {type(exc).__name__}: {exc}"
                continue
            except RemoteError:  # an error instead of the metadata: no use retrying
                conn.close()
                raise
            self._conn, self._metadata = conn, meta
            return conn
        raise ServerUnavailableError(
            f"no policy server answered at {self.uri}: {attempt + 1} attempt(s) over "
            f"{time.monotonic() - start:.2f} s; last error: {last}"
        )

    def _decode(self, raw: str | bytes) -> dict[str, Any]:
        if isinstance(raw, str):  # openpi servers send a traceback as text, then close (1011)
            raise RemoteError("ServerError", f"error sent as a text frame:\n{raw}", self.uri)
        msg = unpackb(raw)
        if not isinstance(msg, dict):
            raise RemoteError(
                "ProtocolError", f"expected a dict, got {type(msg).__name__}", self.uri
            )
        err = msg.get("error")
        if isinstance(err, dict):
            raise RemoteError(str(err.get("type")), str(err.get("message")), self.uri)
        return msg

    def _send(self, payload: bytes) -> bool:
        """Send without waiting for the reply (connecting first if needed); False when the send
        failed because the connection is gone."""
        from websockets.exceptions import WebSocketException

        conn = self._ensure()  # ServerUnavailableError / AuthenticationError propagate
        try:
            conn.send(payload)
            return True
        except (OSError, WebSocketException):
            self._drop()
            return False

    def _receive(self) -> dict[str, Any]:
        assert self._conn is not None
        try:
            raw = self._conn.recv(timeout=self.timeout)
        except TimeoutError:
            self._drop()  # a late reply must not be read as the answer to the next request
            raise TimeoutError(
                f"no reply from policy server {self.uri} within {self.timeout} s "
                "(connection dropped; the next call reconnects)"
            ) from None
        return self._decode(raw)

    def _finish(self, payload: bytes, sent: bool) -> dict[str, Any]:
        """The reply to ``payload`` (already sent when ``sent``); resent once after a reconnect."""
        from websockets.exceptions import WebSocketException

        if sent:
            try:
                return self._receive()
            except TimeoutError:
                raise
            except (OSError, WebSocketException):
                self._drop()  # the server went away: reconnect and send again, once
        if not self._send(payload):
            raise ServerUnavailableError(f"policy server {self.uri} closed the connection")
        try:
            return self._receive()
        except TimeoutError:
            raise
        except (OSError, WebSocketException) as exc:
            self._drop()
            raise ServerUnavailableError(
                f"policy server {self.uri} closed the connection during the request: {exc}"
            ) from None

    def _control(self, name: str, frame: Mapping[str, Any]) -> dict[str, Any]:
        """Send a control frame to an envactor server; to an openpi server, nothing."""
        if self.openpi_server:
            return {"ok": True, "ctrl": name, "sent": False}
        return self._call(packb(frame))

    def _call(self, payload: bytes) -> dict[str, Any]:
        with self._lock:
            return self._finish(payload, self._send(payload))


def infer_message(
    obs: Mapping[str, Any],
    guidance: GuidanceRequest | None = None,
    executor: str | None = None,
    omit: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The request frame for one observation and optionally its one-robot guidance request
    (the wire fields ``prev_action``, ``est_delay``, ``executed`` and ``rtc``); ``executor``
    names the server's executor, ``omit`` the ``rtc`` settings left to it."""
    msg = {str(k): _plain(v) for k, v in obs.items()}
    if guidance is not None:
        if guidance.batch_size != 1:
            raise ValueError(
                f"a request frame carries one robot's guidance, got {guidance.batch_size} envs"
            )
        msg["prev_action"] = np.ascontiguousarray(guidance.remainder[0], dtype=np.float32)
        msg["est_delay"] = int(guidance.delay[0])
        msg["executed"] = int(guidance.executed[0])
        rtc: dict[str, Any] = {
            "schedule": guidance.schedule, "max_guidance_weight": guidance.beta,
            "jacobian": guidance.jacobian, "method": guidance.method,
        }  # fmt: skip
        if executor is not None:
            rtc["executor"] = executor
        msg["rtc"] = {k: v for k, v in rtc.items() if k not in omit}
    return msg
