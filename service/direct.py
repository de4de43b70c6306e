"""The direct lane: the JSON inference routes answered without FastAPI's per-request machinery.

FastAPI serves a request through route matching over every included router, a dependency
solve, a `Request` body and JSON parse, and a re-validation of the model the endpoint returned.
On the tiny default model that costs more CPU than the forward pass does
(docs/benchmarks/request-path.md). `DirectRoutes` stands first among the app's routes, finds
its routes by one dictionary lookup, and runs each as the one call it is: read the body,
validate it with the route's own body field, run the route's request-only dependencies (the
key check, the engine), call the endpoint, write the answer with the route's own serializer.

Only a well-formed request takes the lane. A body that is not JSON, or that fails validation,
goes with its messages replayed to the FastAPI route the lane stands in for, so every refusal
keeps the shape and status that route gives it; exceptions raised on the lane (a missing key,
an unknown model) reach the same exception handlers. The FastAPI route also stays what OpenAPI
documents. A route qualifies only when all it takes is one JSON body and dependencies that
read nothing but the request (`eligible`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Iterable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from .departure import WatchedRoute, watching

_JSON = b"application/json"


def eligible(route: APIRoute) -> bool:
    """One JSON body and nothing else from the request (no path, query, header or cookie
    parameter), dependencies that take only the request, an async endpoint, a declared
    answer model."""
    d = route.dependant
    if d.path_params or d.query_params or d.header_params or d.cookie_params:
        return False
    if len(d.body_params) != 1 or route.body_field is None or d.request_param_name:
        return False
    if d.response_param_name or d.background_tasks_param_name or d.security_scopes_param_name:
        return False
    if not route.dependant.call or not inspect.iscoroutinefunction(route.dependant.call):
        return False
    if route.response_field is None:
        return False
    return all(_request_only(sub) for sub in d.dependencies)


def _request_only(d: Any) -> bool:
    params = (d.path_params, d.query_params, d.header_params, d.cookie_params, d.body_params)
    return (
        not any(params)
        and not d.dependencies
        and d.request_param_name is not None
        and d.call is not None
        and inspect.iscoroutinefunction(d.call)
    )


def _json_body(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == _JSON
    return False


class _Lane:
    """One route on the lane: what its FastAPI handler would do for a valid request."""

    __slots__ = ("route", "body_name", "deps", "watched", "_dump")

    def __init__(self, route: APIRoute) -> None:
        self.route = route
        self.body_name = route.dependant.body_params[0].name
        self.deps = [(d.name, d.call) for d in route.dependant.dependencies]
        self.watched = isinstance(route, WatchedRoute)
        assert route.response_field is not None  # `eligible` routes declare their answer
        # The route's answer settings, bound once rather than read on every request.
        self._dump = functools.partial(
            route.response_field.serialize_json,
            include=route.response_model_include,
            exclude=route.response_model_exclude,
            by_alias=route.response_model_by_alias,
            exclude_unset=route.response_model_exclude_unset,
            exclude_defaults=route.response_model_exclude_defaults,
            exclude_none=route.response_model_exclude_none,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []
        failure: BaseException | None = None
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        except Exception as exc:  # the FastAPI route turns it into its own answer
            failure = exc
        value = None
        if failure is None and messages and messages[-1]["type"] == "http.request":
            body = b"".join(m.get("body", b"") for m in messages)
            value = self._validate(body) if body else None
        if value is None:
            await self.route.handle(scope, _replay(messages, failure, receive), send)
            return
        await self._answer(scope, receive, send, value)

    def _validate(self, body: bytes) -> Any:
        """The body as the route's field validates it, or None for the route to refuse."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return None
        value, errors = self.route.body_field.validate(data, {}, loc=("body",))  # type: ignore[union-attr]
        return None if errors else value

    async def _answer(self, scope: Scope, receive: Receive, send: Send, value: Any) -> None:
        request = Request(scope, receive, send)
        overrides = getattr(scope.get("app"), "dependency_overrides", None) or {}
        values: dict[str, Any] = {self.body_name: value}
        for name, call in self.deps:
            result = await overrides.get(call, call)(request)
            if name is not None:
                values[name] = result
        with watching(receive) if self.watched else contextlib.nullcontext():
            result = await self.route.endpoint(**values)
        if isinstance(result, Response):
            await result(scope, receive, send)
            return
        content = self._dump(result)
        status = self.route.status_code or 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(content)).encode("latin-1")),
                    (b"content-type", _JSON),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _replay(messages: list[Message], failure: BaseException | None, receive: Receive) -> Receive:
    """A receive that gives back what the lane read, then raises what it raised, then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        nonlocal failure
        if pending:
            return pending.pop(0)
        if failure is not None:
            exc, failure = failure, None
            raise exc
        return await receive()

    return replayed


class DirectRoutes(BaseRoute):
    """The lane's routes, matched by exact path and method before any other route."""

    def __init__(self, routes: Iterable[APIRoute]) -> None:
        self._lanes: dict[str, tuple[frozenset[str], _Lane]] = {}
        for route in routes:
            if not eligible(route):
                raise ValueError(f"{route.path} cannot take the direct lane")
            self._lanes[route.path] = (frozenset(route.methods or ()), _Lane(route))

    @property
    def paths(self) -> list[str]:
        return sorted(self._lanes)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope.get("root_path"):
            return Match.NONE, {}
        found = self._lanes.get(scope["path"])
        if found is None or scope["method"] not in found[0] or not _json_body(scope):
            return Match.NONE, {}
        lane = found[1]
        return Match.FULL, {"route": lane.route, "endpoint": lane.route.endpoint, "path_params": {}}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._lanes[scope["path"]][1](scope, receive, send)

    def __repr__(self) -> str:
        return f"DirectRoutes({self.paths})"


def install(app: Any, routers: Iterable[Any], paths: Iterable[str]) -> DirectRoutes:
    """Put the lane for `paths` (POST routes of `routers`) first among `app`'s routes."""
    found = {
        r.path: r
        for router in routers
        for r in router.routes
        if isinstance(r, APIRoute) and "POST" in (r.methods or ())
    }
    missing = [p for p in paths if p not in found]
    if missing:
        raise ValueError(f"no POST route for {missing}")
    direct = DirectRoutes(found[p] for p in paths)
    app.router.routes.insert(0, direct)
    return direct
