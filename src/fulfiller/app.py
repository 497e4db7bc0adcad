"""The ASGI app: wires the receiver, health, metrics, admin and (optionally) the workers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfiller.admin import AdminApi
from fulfiller.config import Config
from fulfiller.metrics import Metrics
from fulfiller.receiver import Receiver
from fulfiller.store import Store, StoreUnavailable, open_store

log = logging.getLogger("fulfiller.app")

# Something started with the app and stopped with it (the worker pool).
Service = Callable[[Store, Metrics], contextlib.AbstractAsyncContextManager[object]]


def create_app(config: Config, *, store: Store | None = None, service: Service | None = None) -> Starlette:
    """The whole HTTP surface for ``config``; ``service`` runs alongside (workers in ``serve``)."""
    store = store or open_store(config.state)
    metrics = Metrics()
    receiver = Receiver(config.receiver, store, metrics)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await store.ping()
        except StoreUnavailable as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, 503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(await metrics.render(store), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route(config.receiver.path, receiver.handle, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if config.admin.token:
        routes += AdminApi(store, config.admin.token).routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        try:
            if service is None:
                yield
            else:
                async with service(store, metrics):
                    yield
        finally:
            await store.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.store = store
    app.state.metrics = metrics
    return app
