"""httpx and httpx2, seen through one shape: what meter uses of each HTTP library.

httpx2 is httpx's successor (openai 3.x and mistralai 3.x are built on it): the same API with
its own classes, so an `httpx.Request` never meets an `httpx2` transport and an exception of
one is not an instance of the other's. The metering code is written once against `HttpLib`;
`lib_of(obj)` gives the library an object (a request, client or transport) comes from.

httpx2 is optional: it is imported only when one of its objects shows up, which means it is
installed. Statically its classes are typed as httpx's, whose API they mirror.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class HttpLib:
    """The classes meter takes from one HTTP library (httpx or httpx2)."""

    name: str
    Request: type[httpx.Request]
    Response: type[httpx.Response]
    ByteStream: type[httpx.ByteStream]
    SyncByteStream: type[httpx.SyncByteStream]
    AsyncByteStream: type[httpx.AsyncByteStream]
    HTTPTransport: type[httpx.HTTPTransport]
    AsyncHTTPTransport: type[httpx.AsyncHTTPTransport]
    Client: type[httpx.Client]
    AsyncClient: type[httpx.AsyncClient]
    Timeout: type[httpx.Timeout]
    HTTPError: type[httpx.HTTPError]
    # Nothing was sent when these happen, so retrying cannot double a call.
    not_sent: tuple[type[httpx.HTTPError], ...]


def _lib(module: Any) -> HttpLib:
    return HttpLib(
        name=module.__name__,
        Request=module.Request,
        Response=module.Response,
        ByteStream=module.ByteStream,
        SyncByteStream=module.SyncByteStream,
        AsyncByteStream=module.AsyncByteStream,
        HTTPTransport=module.HTTPTransport,
        AsyncHTTPTransport=module.AsyncHTTPTransport,
        Client=module.Client,
        AsyncClient=module.AsyncClient,
        Timeout=module.Timeout,
        HTTPError=module.HTTPError,
        not_sent=(module.ConnectError, module.ConnectTimeout),
    )


HTTPX = _lib(httpx)


@functools.cache
def httpx2_lib() -> HttpLib:
    """httpx2's classes (ImportError when it is not installed)."""
    import httpx2

    module: ModuleType = httpx2
    # `httpx2.alias_httpx()` makes `import httpx` give httpx2 itself: then there is one library.
    return HTTPX if module is httpx else _lib(module)


def timeout_for(
    lib: HttpLib, timeout: float | httpx.Timeout | None
) -> float | httpx.Timeout | None:
    """`timeout` as `lib`'s clients take it: an httpx.Timeout becomes an httpx2.Timeout."""
    if timeout is None or isinstance(timeout, int | float | lib.Timeout):
        return timeout
    return lib.Timeout(**timeout.as_dict())


def lib_of(obj: object) -> HttpLib:
    """The library `obj`'s class (or the class it derives from) belongs to: httpx by default."""
    for cls in type(obj).__mro__:
        root = cls.__module__.partition(".")[0]
        if root == "httpx":
            return HTTPX
        if root == "httpx2" and "httpx2" in sys.modules:
            return httpx2_lib()
    return HTTPX
