"""connexion's async operations with each handler decorated once, at start, instead of on every request.

connexion 3's AsyncOperation builds its decorator stack (sync-to-thread, parameters, response) anew for each request,
and the parameter decorator inspects the handler's signature each time: about a tenth of a connector's CPU per call.
Nothing in that stack depends on the request (connexion reads the request and the operation from its context
variables when the decorated function runs), so the result is kept per operation.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from connexion import AsyncApp
from connexion.apps.asynchronous import AsyncApi, AsyncOperation
from connexion.context import receive, scope
from connexion.decorators import StarletteDecorator
from connexion.operations import AbstractOperation


class _DecoratedOnce(StarletteDecorator):
    def __call__(self, function: Callable[..., Any]) -> Callable[[], Awaitable[Any]]:
        decorated = self.decorate(function)

        @functools.wraps(function)
        async def wrapper() -> Any:
            request = self.framework.get_request(uri_parser=self.uri_parser, scope=scope, receive=receive)
            return await decorated(request)

        return wrapper


class _Operation(AsyncOperation):
    @functools.cached_property
    def fn(self) -> Callable[[], Awaitable[Any]]:
        return _DecoratedOnce(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)(self._fn)


class _Api(AsyncApi):
    def make_operation(self, operation: AbstractOperation) -> AsyncOperation:
        return _Operation.from_operation(operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)


def decorate_once(app: AsyncApp) -> None:
    """Make the APIs added to `app` from now on decorate their handlers once; call before add_api."""
    # connexion offers no public hook for the operation class
    app._middleware_app.api_cls = _Api
