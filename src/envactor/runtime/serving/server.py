"""Serve a policy over WebSocket in openpi's wire format, batching requests across clients.

Protocol (see docs/serving.md): on connect the server sends one metadata frame; then each binary
msgpack frame is either one robot's observation dict (reply: ``actions`` (H, A), ``server_timing``,
``weight_version``), optionally with its guidance request (``server_requests``), or a control frame
``{"__ctrl__": ...}`` (reply ``{"ok": True, ...}``).

Observation history: a policy with ``n_obs_steps > 1`` (metadata ``n_obs_steps``) keeps each
connection's last observations; every request's observation enters it, and envactor's extension
frame ``{"__ctrl__": "observe", <observation keys>}`` feeds the steps that ask for no chunk
(``PolicyClient.observe``; ``RemotePolicy`` sends it every step). A client that never sends it
(an openpi client) still works: the history then holds the observations of its requests.
A request the server refuses gets an error and the connection stays open: a client that sends
the handshake header ``X-Envactor-Protocol: envactor-ws/1`` (envactor's ``PolicyClient``) gets the
binary frame ``{"error": {"type", "message"}}``; every other client (an openpi client) gets a text
frame ``"<type>: <message>"`` on one line, which openpi's client raises as ``RuntimeError``. Only a
frame over ``max_size`` closes its connection (close code 1009, by websockets).
Frames are decoded with a budget of list/map entries (``requests.decode_frame``), and frames over
``OFFLOAD_BYTES`` are decoded and validated on decode threads, off the event loop.
Limits: at most ``max_connections`` open connections (HTTP 503 beyond), at most
``max_connections_per_key`` of them per API key (HTTP 429 beyond; only when keys are set), and a
connection that sends no frame for ``idle_timeout_s`` is closed (code 1008, reason "idle ...").
``GET /healthz`` answers 200. Each connection is one env id of the served policy, so per-env
state and noise are per robot; when it closes, everything kept for that env id is released (the
policy's pending actions, history, noise generators and per-env state, the executors' per-env
state), so memory does not grow with the number of connections served (``state_sizes()``).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import numpy as np

from envactor.policy.base import Policy
from envactor.policy.modes import MODE_SCOPES, ModeEnv
from envactor.runtime.executors import EXECUTORS
from envactor.runtime.serving.batching import Batcher, Reply
from envactor.runtime.serving.requests import (
    CONTROL_FRAMES,
    CTRL_KEY,
    InferRequest,
    RequestError,
    RequestParser,
    decode_frame,
)
from envactor.runtime.serving.wire import CLIENT_HEADER, PROTOCOL, WireError, packer

if TYPE_CHECKING:
    from websockets.asyncio.server import Request, Response, ServerConnection

__all__ = ["CLIENT_HEADER", "PROTOCOL", "PolicyServer", "error_text"]

log = logging.getLogger("envactor.server")
"""Handshake header by which envactor's client asks for typed binary error frames."""
DEFAULT_MAX_SIZE = 64 * 2**20
"""64 MiB: three uncompressed 1080p RGB uint8 cameras (3 x 1080 x 1920 x 3 bytes = 17.8 MiB) plus
state fit 3.5 times over (a fourth camera, a depth map or float images still fit)."""
API_KEY_ENV = "ENVACTOR_API_KEY"
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT_S = 300.0
"""5 minutes without a frame: far above any control period or pause between episodes of a live
robot, short enough that abandoned connections do not hold slots for long."""
IDLE_CLOSE_CODE = 1008  # policy violation: the server's idle rule
OFFLOAD_BYTES = 1 << 18
"""Frames larger than this (256 KiB) are decoded and validated on the decode threads, not on the
event loop, so other clients' frames keep flowing meanwhile."""


def default_per_key(max_connections: int) -> int:
    """A quarter of the overall limit (at least 1): one key, leaked or buggy, can hold at most a
    quarter of the slots, so three quarters stay for the other key holders, while one key still
    serves a fleet of robots (64 under the default limit of 256)."""
    return max(1, int(max_connections) // 4)


def error_text(error: Mapping[str, Any]) -> str:
    """An error reply as one line of text, ``"<type>: <message>"`` (the text frame for clients
    that are not envactor's: openpi's client raises it as ``RuntimeError``)."""
    message = " ".join(str(error.get("message", "")).split())
    return f"{error.get('type', 'ServerError')}: {message}"


def policy_metadata(policy: Policy, executors: Sequence[str] | None = None) -> dict[str, Any]:
    """What a client needs to know about ``policy`` (the first frame of every connection);
    ``executors``: the executor names to list (default ``EXECUTORS.names()``, read now)."""
    from envactor import __version__

    p = policy.params
    return {
        "protocol": PROTOCOL,
        "envactor_version": __version__,
        "policy": policy.name,
        "input_features": {
            k: {"shape": list(s.shape), "dtype": s.dtype} for k, s in policy.input_features.items()
        },
        "action_shape": list(policy.action_shape),
        "n_action_steps": p.n_action_steps,
        "control_hz": p.control_hz,
        "weight_version": int(policy.weight_version),
        "can_guide": policy.can_guide(),
        "can_prefix": policy.can_prefix(),
        "n_obs_steps": int(policy.n_obs_steps),
        "executors": EXECUTORS.names() if executors is None else list(executors),
    }


class PolicyServer:
    """A WebSocket policy server (openpi wire format) with cross-client batching.

    Args:
        policy: the policy to serve (its normalizer does the (un)normalization).
        host: interface to bind; loopback unless told otherwise.
        port: TCP port (0 picks a free one; see ``port`` after ``start()``).
        api_key: a key, or a list of keys (one per user or fleet); when set, a handshake
            without ``Authorization: Api-Key <key>`` for one of them gets HTTP 401.
        max_batch: most requests per forward pass (1 disables batching).
        batch_timeout_ms: how long a request may wait for others to join its batch.
        max_size: largest accepted frame in bytes (a larger one closes its connection, 1009);
            default 64 MiB (``DEFAULT_MAX_SIZE``).
        max_connections: handshakes beyond this many open connections get HTTP 503.
        max_connections_per_key: handshakes beyond this many open connections with the same API
            key get HTTP 429 (default ``max_connections // 4``; unused without API keys).
        idle_timeout_s: a connection that sends no frame for this long is closed (code 1008);
            None or 0 never closes idle connections. The time a request is being answered
            does not count.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | Sequence[str] | None = None,
        max_batch: int = 16,
        batch_timeout_ms: float = 2.0,
        max_size: int = DEFAULT_MAX_SIZE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_key: int | None = None,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {batch_timeout_ms}")
        keys = [api_key] if isinstance(api_key, str) else list(api_key or [])
        if (api_key is not None and not keys) or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(
                f"api_key must be a non-empty string, a list of them, or None; got {api_key!r}"
            )
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        per_key = (
            default_per_key(max_connections)
            if max_connections_per_key is None
            else int(max_connections_per_key)
        )
        if per_key < 1:
            raise ValueError(f"max_connections_per_key must be >= 1, got {per_key}")
        if idle_timeout_s is not None and idle_timeout_s < 0:
            raise ValueError(f"idle_timeout_s must be >= 0 (0: never), got {idle_timeout_s}")
        self.policy = policy
        self._observes = policy.n_obs_steps > 1 or "_observe" in policy.hooks()
        self.host = host
        self.port = int(port)
        self.max_batch = int(max_batch)
        self.batch_timeout_ms = float(batch_timeout_ms)
        self.max_size = int(max_size)
        self.max_connections = int(max_connections)
        self.max_connections_per_key = per_key
        self.idle_timeout_s = float(idle_timeout_s) if idle_timeout_s else None
        self._keys = [f"Api-Key {k}".encode() for k in keys]
        self._env_ids = itertools.count()
        self._open = 0
        self._per_key: dict[int, int] = {}  # key index -> open connections
        self._batcher: Batcher | None = None
        self._parser: RequestParser | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._decoder: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        """``ws://host:port`` (the bound port once running)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def stats(self) -> dict[str, int]:
        """Forward passes run, requests answered by them, open connections."""
        b = self._batcher
        return {
            "forward_passes": b.forward_passes if b else 0,
            "requests": b.requests if b else 0,
            "connections": self._open,
        }

    def state_sizes(self) -> dict[str, int]:
        """How many entries the per-connection tables hold: open connections, connections per
        API key, and the policy's and executors' per-env state (pending actions, observation
        histories, noise generators). Back to their size before once the connections close."""
        policy = self.policy
        queues = getattr(getattr(policy, "_queues", None), "_queues", {})
        history = getattr(getattr(policy, "_history", None), "_frames", {})
        executors = self._batcher.executors if self._batcher is not None else {}
        return {
            "connections": self._open,
            "keys": len(self._per_key),
            "policy_queues": len(queues),
            "policy_history": len(history),
            "policy_rngs": len(getattr(policy, "_rngs", {})),
            "executor_envs": sum(len(getattr(e, "_envs", {})) for e in executors.values()),
        }

    def _release(self, env_id: int) -> None:
        """Forget everything kept for ``env_id`` (worker thread; its connection closed)."""
        self.policy.reset([env_id])
        rngs = getattr(self.policy, "_rngs", None)  # reset keeps them: streams continue
        if isinstance(rngs, dict):
            rngs.pop(env_id, None)
            for mode in MODE_SCOPES:
                rngs.pop(ModeEnv(mode, env_id), None)
        if self._batcher is not None:
            for executor in self._batcher.executors.values():
                executor.reset([env_id])

    # ------------------------------------------------------------------ running
    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop()`` (or cancellation); ``ready`` is called once listening."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # the checks of this policy's frames, prepared once (reads the executor plugins' names)
        self._parser = RequestParser(self.policy.input_features, self.policy.action_shape)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="envactor-infer")
        self._decoder = ThreadPoolExecutor(2, thread_name_prefix="envactor-decode")
        self._batcher = Batcher(
            self.policy,
            self._executor,
            max_batch=self.max_batch,
            timeout_s=self.batch_timeout_ms / 1e3,
            capacity=lambda: self._open,
        )
        batching = asyncio.create_task(self._batcher.run(), name="envactor-batcher")
        try:
            async with serve(
                self._handler,
                self.host,
                self.port,
                process_request=self._process_request,
                max_size=self.max_size,
                compression=None,
            ) as srv:
                self.port = int(next(iter(srv.sockets)).getsockname()[1])
                if ready is not None:
                    ready()
                await self._stop.wait()
        finally:
            batching.cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._decoder.shutdown(wait=True, cancel_futures=True)

    def start(self, timeout: float = 30.0) -> PolicyServer:
        """Serve on a background thread (own event loop); returns once listening."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"policy server already running at {self.url}")
        ready = threading.Event()
        self._error = None

        def main() -> None:
            try:
                asyncio.run(self.serve(ready.set))
            except BaseException as exc:  # reported to start()'s caller
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=main, name="envactor-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"policy server did not start listening within {timeout} s")
        if self._error is not None:
            raise RuntimeError(
                f"policy server could not start on {self.host}:{self.port}: {self._error}"
            ) from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and stop serving (from any thread)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections
    def _key_of(self, request: Request | None) -> int | None:
        """Index of the API key ``request`` carries (-1: none matches); None without keys."""
        if not self._keys:
            return None
        got = (
            b""
            if request is None
            else request.headers.get("Authorization", "").encode("utf-8", "replace")
        )
        found = -1
        for i, key in enumerate(self._keys):  # compare with every key: no early exit
            if hmac.compare_digest(got, key):
                found = i
        return found

    def _refusal(self, key: int | None) -> tuple[HTTPStatus, str] | None:
        """Why a new connection with ``key`` is over a limit (None: it is not)."""
        if self._open >= self.max_connections:
            return (
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"policy server is at its limit of {self.max_connections} connections",
            )
        if key is not None and self._per_key.get(key, 0) >= self.max_connections_per_key:
            return (
                HTTPStatus.TOO_MANY_REQUESTS,
                f"API key #{key + 1} is at its limit of {self.max_connections_per_key} open "
                "connections (--max-connections-per-key); close one or use another key",
            )
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Health check, API key and connection limits, before the WebSocket handshake."""
        if request.path.split("?", 1)[0] == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        key = self._key_of(request)
        if key == -1:
            return connection.respond(
                HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Api-Key <key>'\n"
            )
        refused = self._refusal(key)
        if refused is not None:
            return connection.respond(refused[0], refused[1] + "\n")
        return None

    async def _watch_idle(self, conn: ServerConnection, env_id: int, idle: list[float]) -> None:
        """Close ``conn`` (code 1008) once it has waited ``idle_timeout_s`` for a frame.

        ``idle[0]`` is the loop time its handler began waiting for the next frame (``inf``
        while a frame is being answered): one timer per connection, not one per frame.
        """
        timeout = self.idle_timeout_s
        assert timeout is not None
        loop = asyncio.get_running_loop()
        while True:
            left = idle[0] + timeout - loop.time()
            if left > 0:
                await asyncio.sleep(min(left, timeout))
                continue
            log.info("closing idle connection of env %s after %s s", env_id, timeout)
            await conn.close(
                IDLE_CLOSE_CODE, f"idle for {timeout:g} s without a frame (--idle-timeout-s)"
            )
            return

    async def _handler(self, conn: ServerConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        env_id = next(self._env_ids)
        request = conn.request
        key = self._key_of(request)
        refused = self._refusal(key)
        if refused is not None:  # handshakes that raced past _process_request
            await conn.close(1013, refused[1][:120])  # 1013: try again later
            return
        self._open += 1
        if key is not None:
            self._per_key[key] = self._per_key.get(key, 0) + 1
        typed = request is not None and request.headers.get(CLIENT_HEADER, "") == PROTOCOL
        clock = asyncio.get_running_loop().time
        idle = [math.inf]  # when it began waiting for a frame (see _watch_idle)
        watchdog: asyncio.Task[None] | None = None
        pack = packer()  # this connection's loop packs its frames with one reused packer
        try:
            assert self._parser is not None
            meta = policy_metadata(self.policy, self._parser.executor_names())
            meta.update(env_id=env_id, max_batch=self.max_batch)
            await conn.send(pack(meta))
            if self.idle_timeout_s is not None:
                watchdog = asyncio.create_task(self._watch_idle(conn, env_id, idle))
            while True:
                idle[0] = clock()
                message = await conn.recv()
                idle[0] = math.inf  # answering does not count as idle
                reply = await self._reply(message, env_id)
                error = reply.get("error")
                if error is None or typed or not isinstance(error, Mapping):
                    await conn.send(pack(reply))
                else:  # openpi's convention: an error is a text frame (the connection stays)
                    await conn.send(error_text(error))
        except ConnectionClosed:
            pass
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._open -= 1
            if key is not None:
                left = self._per_key.pop(key) - 1
                if left:
                    self._per_key[key] = left
            try:
                await self._on_worker(lambda: self._release(env_id))
            except Exception:  # a failing reset must not kill the server
                log.exception("releasing env %s failed after its connection closed", env_id)

    async def _on_worker(self, fn: Callable[[], Any]) -> Any:
        assert self._batcher is not None  # counts the job: no inline forward pass overlaps it
        return await self._batcher.on_worker(fn)

    def _parse(
        self, message: bytes, env_id: int, arrived: float
    ) -> InferRequest | tuple[Mapping[str, Any], dict[str, np.ndarray] | None]:
        """Decode and validate one binary frame (any thread): a request, or a control frame
        with its parsed observation (``observe``). Raises RequestError."""
        parser = self._parser
        if parser is None:  # not serving (a direct call): the checks of the policy as it is now
            parser = RequestParser(self.policy.input_features, self.policy.action_shape)
        try:
            msg = decode_frame(message)
        except WireError as exc:
            raise RequestError("DecodeError", str(exc)) from None
        if isinstance(msg, dict | Mapping) and CTRL_KEY in msg:
            obs = None
            if msg[CTRL_KEY] == "observe":
                obs = parser.observation(msg)
            return msg, obs
        return parser.request(msg, env_id, arrived)

    async def _reply(self, message: str | bytes, env_id: int) -> Reply:
        """The reply to one frame; every refusal is an error reply, never an exception."""
        arrived = time.perf_counter()
        if isinstance(message, str):
            return RequestError(
                "ProtocolError", "expected a binary frame (msgpack), got a text frame"
            ).reply()
        try:
            if len(message) > OFFLOAD_BYTES and self._decoder is not None:
                parsed = await asyncio.get_running_loop().run_in_executor(
                    self._decoder, self._parse, message, env_id, arrived
                )
            else:
                parsed = self._parse(message, env_id, arrived)
            if not isinstance(parsed, InferRequest):
                return await self._control(*parsed, env_id)
        except RequestError as exc:
            return exc.reply()
        except Exception as exc:  # e.g. a failing policy.reset: this client's error only
            log.exception("request of env %s failed", env_id)
            return RequestError("ServerError", f"{type(exc).__name__}: {exc}").reply()
        assert self._batcher is not None
        reply = self._batcher.answer_now(parsed)  # a lone request of a cheap policy: no future
        return reply if reply is not None else await self._batcher.submit(parsed)

    async def _control(
        self, msg: Mapping[str, Any], obs: dict[str, np.ndarray] | None, env_id: int
    ) -> Reply:
        name = msg[CTRL_KEY]
        if name in ("episode_start", "episode_end"):
            await self._on_worker(lambda: self.policy.reset([env_id]))
        elif name == "set_seed":
            seed = msg.get("seed")
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise RequestError(
                    "ProtocolError", f"set_seed: expected an int 'seed', got {seed!r}"
                )
            await self._on_worker(lambda: self.policy.set_env_seeds({env_id: seed}))
        elif name == "observe":
            assert obs is not None  # parsed with the frame
            if self._observes:
                row = {k: np.array(v)[None] for k, v in obs.items()}  # own, writable copies
                await self._on_worker(lambda: self.policy.observe(row, env_ids=[env_id]))
        else:
            raise RequestError(
                "ProtocolError",
                f"unknown control frame {name!r}; expected one of {list(CONTROL_FRAMES)}",
            )
        return {"ok": True, "ctrl": name, "env_id": env_id}


# ---------------------------------------------------------------------------- CLI
