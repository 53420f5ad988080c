"""`create_app(settings)`: the Litestar application, its plugins, routes and lifespan.

The lifespan owns every background task: it opens the engine, starts the group-commit batcher,
the latency recorder and (unless disabled) the aggregator, and on shutdown stops accepting,
flushes the batcher, lets the aggregator finish its batch and closes the client, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any, Literal

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from loguru import logger

from fanfinity import __version__
from fanfinity.api import docs_ui
from fanfinity.api.access import check_access
from fanfinity.api.controllers import EventController, HealthController, MatchController
from fanfinity.api.dashboard import dashboard_page, static_files
from fanfinity.api.middleware import install_request_context
from fanfinity.api.problems import EXCEPTION_HANDLERS
from fanfinity.api.prometheus import prometheus_metrics
from fanfinity.api.protocol import stream_slots
from fanfinity.api.ratelimit import ProducerRateLimiter, TokenBucketLimiter
from fanfinity.config import Settings
from fanfinity.pipeline.aggregator import Aggregator
from fanfinity.pipeline.fold import SummaryBounds
from fanfinity.pipeline.ingest import IngestBatcher, IngestLatencyRecorder
from fanfinity.pipeline.reads import MatchMetricsReader
from fanfinity.pipeline.streams import StreamHub
from fanfinity.storage.engine import Engine, open_engine
from fanfinity.tracing import Tracing, start_tracing

Role = Literal["api", "aggregator"]


@dataclass(slots=True)
class Services:
    """What the handlers need, built by the lifespan and kept in `app.state.services`.

    Handlers read it from there rather than through `Provide` dependency injection, which costs
    a resolution per request on the hot path."""

    settings: Settings
    engine: Engine
    batcher: IngestBatcher
    reader: MatchMetricsReader
    aggregator: Aggregator | None
    streams: StreamHub
    limiter: ProducerRateLimiter | None = None
    accepting: bool = True


def create_app(
    settings: Settings | None = None, role: Role = "api", drain_on_signals: bool = False
) -> Litestar:
    """The API (role "api") or the aggregator's probe-only app (role "aggregator").

    `drain_on_signals` (set by the CLI, not by tests) ends live streams and reports not-ready as
    soon as SIGTERM/SIGINT arrives, instead of when uvicorn has finished waiting for them.
    """
    settings = settings or Settings.from_env()
    tracing = start_tracing(settings)
    run_aggregator = role == "aggregator" or settings.aggregator_enabled
    route_handlers: list[Any] = [HealthController, prometheus_metrics]
    if role == "api":
        route_handlers += [EventController, MatchController, dashboard_page, static_files]

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with _run_services(app, settings, run_aggregator, tracing) as services:
            restore = _drain_on_termination(services) if drain_on_signals else None
            try:
                yield
            finally:
                if restore is not None:
                    restore()

    app = Litestar(
        route_handlers=route_handlers,
        plugins=[] if tracing is None else [tracing.plugin],
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=check_access,  # the route's declared access, on every routed request
        lifespan=[lifespan],
        cors_config=(
            CORSConfig(
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Content-Type", "X-API-Key", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Location", "Retry-After"],
                allow_credentials=False,
            )
            if settings.cors_origins
            else None
        ),
        openapi_config=OpenAPIConfig(
            title="Fanfinity engagement analytics",
            version=__version__,
            description=(
                "Durable, idempotent match-event ingest and real-time per-match engagement "
                "metrics. Errors are RFC 9457 application/problem+json."
            ),
            path=docs_ui.SCHEMA_PATH,
            openapi_router=docs_ui.schema_router(),
            render_plugins=[docs_ui.swagger_ui()],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="apiKey", name="X-API-Key", security_scheme_in="header"
                    )
                }
            ),
        ),
        debug=False,
        state=None,
    )
    return install_request_context(  # around everything: 404s and 405s on no route included
        app,
        trace_ids=tracing is not None,
        log_successes=settings.log_level in ("TRACE", "DEBUG"),
    )


@contextlib.asynccontextmanager
async def _run_services(
    app: Litestar, settings: Settings, run_aggregator: bool, tracing: Tracing | None
) -> AsyncIterator[Services]:
    tracer = None if tracing is None else tracing.tracer
    engine = await open_engine(settings, [] if tracing is None else tracing.mongo_listeners)
    latency = IngestLatencyRecorder(engine.summaries)
    batcher = IngestBatcher(
        engine.events,
        latency,
        max_batch=settings.batch_max_size,
        linger_s=settings.batch_linger_ms / 1000,
        queue_max=settings.ingest_queue_max,
        store_timeout_s=settings.store_timeout_s,
        tracer=tracer,
    )
    reader = MatchMetricsReader(engine.summaries, settings.metrics_cache_ms / 1000)
    streams = StreamHub(
        reader,
        settings.stream_interval_ms / 1000,
        stream_slots(settings),
        max_per_client=settings.stream_max_per_client,
        slow_s=settings.stream_slow_s,
    )
    aggregator = (
        Aggregator(
            engine,
            batch_size=settings.aggregator_batch_size,
            stall_after_s=settings.aggregator_stall_s,
            active_window=timedelta(minutes=settings.active_window_min),
            tracer=tracer,
            on_applied=streams.nudge,
            bounds=SummaryBounds(settings.max_teams_per_match, settings.max_minutes_per_match),
        )
        if run_aggregator
        else None
    )
    services = Services(
        settings=settings,
        engine=engine,
        batcher=batcher,
        reader=reader,
        aggregator=aggregator,
        streams=streams,
        limiter=(
            ProducerRateLimiter(
                TokenBucketLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
                by_api_key=bool(settings.api_keys),
            )
            if settings.rate_limit_per_s > 0
            else None
        ),
    )
    app.state.settings = settings
    app.state.services = services
    if not settings.api_keys:
        logger.warning("FANFINITY_API_KEYS is empty: producers are not authenticated")
    batcher.start()
    latency_task = asyncio.create_task(latency.run(), name="ingest-latency")
    aggregator_task = (
        asyncio.create_task(aggregator.run(), name="aggregator") if aggregator else None
    )
    logger.info("fanfinity {} started on the {} engine", __version__, engine.name)
    try:
        yield services
    finally:
        await asyncio.shield(
            _shutdown(
                services, latency, latency_task, aggregator_task, settings.shutdown_grace_s, tracing
            )
        )


def _drain_on_termination(services: Services) -> Callable[[], None]:
    """Chain a handler before uvicorn's SIGTERM/SIGINT handler; returns a function undoing it.

    uvicorn stops accepting connections on SIGTERM but runs the lifespan shutdown only after open
    responses finish, and an SSE stream never finishes by itself: without this, every deploy would
    wait out the whole grace period with dashboards connected.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {number: signal.getsignal(number) for number in signals}
    draining: list[asyncio.Task[None]] = []

    def start_draining() -> None:
        if services.accepting:
            services.accepting = False
            logger.info("termination signal: not ready any more, ending live streams")
            draining.append(loop.create_task(services.streams.close()))

    def handler(number: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(start_draining)
        chained = previous[signal.Signals(number)]
        if callable(chained):
            chained(number, frame)

    for number in signals:
        signal.signal(number, handler)

    def restore() -> None:
        for number, chained in previous.items():
            signal.signal(number, chained)

    return restore


async def _shutdown(
    services: Services,
    latency: IngestLatencyRecorder,
    latency_task: asyncio.Task[None],
    aggregator_task: asyncio.Task[None] | None,
    grace_s: float,
    tracing: Tracing | None,
) -> None:
    services.accepting = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(grace_s, 0.1)  # one budget for every step below

    def remaining() -> float:
        return max(deadline - loop.time(), 0.05)

    await services.streams.close()
    await services.batcher.close(timeout_s=remaining())
    # A task that already ended (its liveness failed) has nothing left to stop.
    if (
        services.aggregator is not None
        and aggregator_task is not None
        and not aggregator_task.done()
    ):
        services.aggregator.stop()
        try:
            await asyncio.wait_for(asyncio.shield(aggregator_task), timeout=remaining())
        except TimeoutError:
            logger.error("aggregator did not stop within {}s; cancelling it", grace_s)
            aggregator_task.cancel()
            await asyncio.gather(aggregator_task, return_exceptions=True)
    latency_task.cancel()
    await asyncio.gather(latency_task, return_exceptions=True)
    await latency.flush()
    services.engine.close()
    if tracing is not None:  # last, so the spans of the final flush and batch are exported
        await asyncio.to_thread(tracing.shutdown)
    logger.info("shutdown complete")
