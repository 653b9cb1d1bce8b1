"""The client's sans-IO core (the h11 habit): a route call is a ``Call`` value (method, path,
query, body, idempotency key, whether it may be repeated, how to read its answer); an
``Exchange`` follows one call through its attempts and says, for each outcome, "here is the
result", "raise this" or "wait this long and send the same request again"; ``Pages`` says how
to walk a listing. None of it sends a byte or sleeps.

The sync and async clients (``_sync``, ``_async``) are thin shells: they turn a ``Call`` into
an ``httpx.Request`` once (so every attempt sends the same bytes, the same key included), send
it, feed the outcome to the ``Exchange`` and sleep when told to. The routes themselves are
written once, in ``_operations``, as functions returning a ``Call``; the ``endpoint`` and
``paginated`` descriptors give each client its typed method (``T`` for the sync client,
``Awaitable[T]`` / ``AsyncIterator[T]`` for the async one).
"""

from __future__ import annotations

import functools
import inspect
import json
import random
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload
from urllib.parse import quote

import msgpack

from wallet_client._errors import ConnectionFailed, error_from_problem
from wallet_client._retry import RetryPolicy, parse_retry_after

T = TypeVar("T")
P = ParamSpec("P")

JSON_MEDIA_TYPE = "application/json"
MSGPACK_MEDIA_TYPE = "application/msgpack"
PROBLEM_MEDIA_TYPE = "application/problem+json"
KEY_PREFIX = "wc-"  # the client's keys: "wc-" and 32 hex digits (128 random bits)
# Methods that are idempotent by HTTP's definition (RFC 9110 9.2.2): safe to repeat.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_.:-]+")  # the API's id alphabet: nothing to encode


def new_key() -> str:
    """A fresh ``Idempotency-Key``."""
    return KEY_PREFIX + secrets.token_hex(16)


def segment(value: str) -> str:
    """A path segment: ``/`` and ``%`` (and anything outside the id alphabet) percent-encoded,
    and ``.`` / ``..`` spelled out so that no URL normaliser folds them away."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    if _PLAIN_SEGMENT.fullmatch(value):
        return value
    return quote(value, safe=":")


def query(**values: Any) -> tuple[tuple[str, str], ...]:
    """Query parameters from keyword values, ``None`` left out, ints written plainly."""
    return tuple((name, str(value)) for name, value in values.items() if value is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Call(Generic[T]):
    """One route call. ``parse`` turns the decoded 2xx body (or an ``accept_statuses`` one)
    into the result. ``repeatable`` says whether sending it twice is harmless (``_retry``);
    a keyed call always is."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Sequence[tuple[str, str]] = ()
    body: Any = None
    msgpack: bool = False  # send the body as MessagePack and ask for MessagePack back
    idempotency_key: str | None = None
    repeatable: bool | None = None  # None: decided by the method (and the key)
    accept_statuses: frozenset[int] = frozenset()  # non-2xx answers that are results, not errors
    extra_timeout_s: float = 0.0  # added to the client's timeout (a long poll)
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def retry_safe(self) -> bool:
        if self.repeatable is not None:
            return self.repeatable
        return self.method in IDEMPOTENT_METHODS or self.idempotency_key is not None

    def request_parts(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.build_request`` (minus the timeout)."""
        headers = dict(self.headers)
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        content = None
        if self.body is not None:
            if self.msgpack:
                content = msgpack.packb(self.body, use_bin_type=True)
                headers["Content-Type"] = MSGPACK_MEDIA_TYPE
            else:
                content = json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()
                headers["Content-Type"] = JSON_MEDIA_TYPE
        if self.msgpack:
            headers["Accept"] = MSGPACK_MEDIA_TYPE
        # No params at all (not an empty list) when there are none: httpx then skips merging
        # them into the URL (measured: about a fifth of the client's own cost per call).
        return {"method": self.method, "url": self.path, "params": list(self.params) if self.params else None,
                "headers": headers, "content": content}


def decode(content_type: str, content: bytes) -> Any:
    """The body by its media type: JSON (problem+json too), MessagePack, else the text."""
    media = content_type.split(";")[0].strip().lower()
    if media in (JSON_MEDIA_TYPE, PROBLEM_MEDIA_TYPE) or media.endswith("+json"):
        return json.loads(content) if content else None
    if media == MSGPACK_MEDIA_TYPE:
        return msgpack.unpackb(content, raw=False)
    return content.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait ``delay_s``, then send the same request again."""

    delay_s: float


class Exchange(Generic[T]):
    """One call through its attempts (sans-IO). The shell calls ``answered`` or ``failed``
    after each attempt with the seconds since the first one started; each returns the result,
    a ``Retry`` or raises."""

    def __init__(self, call: Call[T], policy: RetryPolicy, rng: random.Random) -> None:
        self.call = call
        self.policy = policy
        self.rng = rng
        self.attempt = 1

    def answered(self, status: int, headers: Mapping[str, str], content: bytes, elapsed_s: float) -> T | Retry:
        call = self.call
        if 200 <= status < 300 or status in call.accept_statuses:
            return call.parse(decode(headers.get("content-type", ""), content))
        retry_after = headers.get("retry-after")
        delay = self.policy.delay_after_status(
            status=status, retry_after=retry_after, attempt=self.attempt, elapsed_s=elapsed_s,
            repeatable=call.retry_safe, rng=self.rng,
        )
        if delay is not None:
            self.attempt += 1
            return Retry(delay)
        try:
            problem = decode(headers.get("content-type", ""), content)
        except ValueError:
            problem = None
        raise error_from_problem(
            status, problem if isinstance(problem, Mapping) else {}, content=content,
            retry_after_s=parse_retry_after(retry_after), idempotency_key=call.idempotency_key,
        )

    def failed(self, error: Exception, elapsed_s: float) -> Retry:
        delay = self.policy.delay_after_error(
            error=error, attempt=self.attempt, elapsed_s=elapsed_s, repeatable=self.call.retry_safe, rng=self.rng,
        )
        if delay is None:
            raise ConnectionFailed(
                f"{self.call.method} {self.call.path}: {type(error).__name__}: {error}"
                f" (after {self.attempt} attempt{'s' if self.attempt > 1 else ''})",
                idempotency_key=self.call.idempotency_key, attempts=self.attempt,
            ) from error
        self.attempt += 1
        return Retry(delay)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pages(Generic[T]):
    """How to walk a listing: the first page's call, the items of a page, and the next page's
    call (``None`` after the last)."""

    first: Call[Any]
    items: Callable[[Any], Sequence[T]]
    following: Callable[[Any], Call[Any] | None]


# -- the two shells' common face, and the descriptors that give them typed methods ---------------


def _describe(descriptor: Any, build: Callable[..., Any]) -> None:
    """The route's name and docstring on its descriptor (``help(WalletClient.transfer)``)."""
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(descriptor, name, getattr(build, name, None))
    descriptor.__wrapped__ = build
    # What a caller of the bound method sees: the route's parameters without ``self``.
    signature = inspect.signature(build)
    descriptor.bound_signature = signature.replace(
        parameters=list(signature.parameters.values())[1:], return_annotation=inspect.Signature.empty,
    )


class SyncSender:
    """Base of the sync client: runs a ``Call`` to its result."""

    def _new_key(self) -> str:
        return new_key()

    def _run(self, call: Call[T]) -> T:
        raise NotImplementedError

    def _walk(self, pages: Pages[T]) -> Iterator[T]:
        call: Call[Any] | None = pages.first
        while call is not None:
            page = self._run(call)
            yield from pages.items(page)
            call = pages.following(page)


class AsyncSender:
    """Base of the async client: awaits a ``Call``'s result."""

    def _new_key(self) -> str:
        return new_key()

    async def _run(self, call: Call[T]) -> T:
        raise NotImplementedError

    def _walk(self, pages: Pages[T]) -> AsyncIterator[T]:
        return _AsyncWalk(self, pages)


class _AsyncWalk(AsyncIterator[T]):
    """An async iterator over every item of every page. A class, not an async generator: one
    left half-way (``break`` out of ``async for``) has nothing to finalise, so it needs no
    ``aclose()`` on any event loop."""

    def __init__(self, sender: AsyncSender, pages: Pages[T]) -> None:
        self._sender = sender
        self._pages = pages
        self._next: Call[Any] | None = pages.first
        self._buffer: list[T] = []

    def __aiter__(self) -> _AsyncWalk[T]:
        return self

    async def __anext__(self) -> T:
        while not self._buffer:
            if self._next is None:
                raise StopAsyncIteration
            page = await self._sender._run(self._next)
            self._buffer = list(self._pages.items(page))
            self._buffer.reverse()
            self._next = self._pages.following(page)
        return self._buffer.pop()


class endpoint(Generic[P, T]):
    """Turns ``def route(self, ...) -> Call[T]`` into a method that returns ``T`` on the sync
    client and ``Awaitable[T]`` on the async one, with the same signature and docstring."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build
        self.bound_signature: inspect.Signature
        _describe(self, build)

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> endpoint[P, T]: ...
    @overload
    def __get__(self, instance: SyncSender, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, instance: AsyncSender, owner: type[Any]) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, instance: Any, owner: type[Any]) -> Any:
        if instance is None:
            return self
        build = self.build

        @functools.wraps(build)
        def method(*args: Any, **kwargs: Any) -> Any:
            return instance._run(build(instance, *args, **kwargs))

        method.__signature__ = self.bound_signature  # type: ignore[attr-defined]
        instance.__dict__[build.__name__] = method  # later lookups find it there (a non-data descriptor)
        return method


class paginated(Generic[P, T]):
    """Turns ``def walk(self, ...) -> Pages[T]`` into a method returning ``Iterator[T]`` on the
    sync client and ``AsyncIterator[T]`` on the async one: every item of every page, fetching
    the next page only when the previous one is used up."""

    def __init__(self, build: Callable[Concatenate[Any, P], Pages[T]]) -> None:
        self.build = build
        self.bound_signature: inspect.Signature
        _describe(self, build)

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> paginated[P, T]: ...
    @overload
    def __get__(self, instance: SyncSender, owner: type[Any]) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, instance: AsyncSender, owner: type[Any]) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, instance: Any, owner: type[Any]) -> Any:
        if instance is None:
            return self
        build = self.build

        @functools.wraps(build)
        def method(*args: Any, **kwargs: Any) -> Any:
            return instance._walk(build(instance, *args, **kwargs))

        method.__signature__ = self.bound_signature  # type: ignore[attr-defined]
        instance.__dict__[build.__name__] = method  # later lookups find it there (a non-data descriptor)
        return method
