"""The ASGI app: wires the receiver, health, metrics, admin, retention and (optionally) the workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fulfiller.config import Config
from fulfiller.intake.receiver import Receiver
from fulfiller.intake.refusal_log import RefusalLog
from fulfiller.metrics import Metrics
from fulfiller.ops.admin import AdminApi
from fulfiller.ops.maintenance import prune_hourly
from fulfiller.store import Store, StoreUnavailable, open_store

log = logging.getLogger("fulfiller.app")


class Running(Protocol):
    """What a service started with the app tells ``/readyz``."""

    @property
    def stopped(self) -> bool:
        """Its loop has ended while the app runs on (a crash): the process is not ready."""


# Something started with the app and stopped with it (the worker pool).
Service = Callable[[Store, Metrics], contextlib.AbstractAsyncContextManager[Running]]


class _App(Starlette):
    """Starlette, with each webhook POST handed straight to the receiver.

    Every delivery would otherwise pass two middlewares and the router first, for
    nothing: an error still ends as a 500 (uvicorn answers it, as Starlette would),
    and other methods on the path, or other paths, take Starlette's way (405, 404).
    """

    def __init__(self, receiver: Receiver, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._receiver = receiver
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self._path \
                and not scope.get("root_path"):
            await self._receiver(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(config: Config, *, store: Store | None = None, service: Service | None = None) -> Starlette:
    """The whole HTTP surface for ``config``; ``service`` runs alongside (workers in ``serve``)."""
    store = store or open_store(config.state, serving=True)
    metrics = Metrics()
    refusals = RefusalLog(config.receiver)
    receiver = Receiver(config.receiver, store, metrics, refusals)
    admin = AdminApi(store, config.admin.token, refusals) if config.admin.token else None
    started: list[Running] = []  # the service, while the app runs

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await store.ping()
        except StoreUnavailable as exc:
            reason = str(exc)
        else:
            if not any(s.stopped for s in started):
                return JSONResponse({"status": "ready"})
            reason = "the worker loop has stopped"
        # Why, only for the operator: the store's error names its user, host and database.
        detail = {"reason": reason} if admin is not None and admin.authorized(request) else {}
        return JSONResponse({"status": "not ready", **detail}, 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(await metrics.render(store), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        # POSTs go straight to the receiver (_App); this route answers the other methods 405.
        Route(config.receiver.path, receiver, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if admin is not None:
        routes += admin.routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        pruning = asyncio.create_task(prune_hourly(config, store, metrics), name="retention")
        try:
            if service is None:
                yield
            else:
                async with service(store, metrics) as running:
                    started.append(running)
                    try:
                        yield
                    finally:
                        started.remove(running)
        finally:
            pruning.cancel()  # it stops after its transaction in flight
            await asyncio.wait([pruning])
            await store.close()

    app = _App(receiver, config.receiver.path, routes=routes, lifespan=lifespan)
    app.state.store = store
    app.state.metrics = metrics
    return app
