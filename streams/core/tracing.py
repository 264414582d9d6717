"""A job's trace across every hop: each stage runs in an OpenTelemetry span whose parent is the
span that sent its input, carried in the Kafka message's headers as W3C trace context
(`traceparent`, `tracestate`). An upload whose headers carry a trace continues it; otherwise the
intake's span starts one. So upload -> intake -> tracker -> stages -> GPU worker -> tracker ->
result is one trace, across processes.

A stage that takes messages in batches (the catalog's index writes) gathers messages of many
traces: each batch is a span of its own, linked to the span that sent each of its messages
(OpenTelemetry's way for a batch consumer).

A request to the status API is a span of its own (`POST /jobs` and so on), continuing the
caller's `traceparent` header: a job submitted over HTTP starts its trace there, and the upload
the request publishes is its child.

Spans are exported over OTLP/HTTP when OpenTelemetry's own variables name a collector
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_* options apply).
Without one, nothing is recorded, and the trace context still passes through untouched.

Every message restyle sends also says what it is: `content-type: application/json` and
`restyle-schema-version`."""
from __future__ import annotations

import contextlib
import os

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from schemas.ids import SCHEMA_VERSION

TRACER = trace.get_tracer("restyle")
CONTENT_HEADERS = [("content-type", b"application/json"),
                   ("restyle-schema-version", str(SCHEMA_VERSION).encode())]


def export_spans(service_name: str) -> bool:
    """Export this process's spans over OTLP if a collector is configured; returns whether."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def http_middleware():
    """The aiohttp middleware that puts each request to the status API in a SERVER span named
    after its route (`POST /jobs`), with OpenTelemetry's HTTP attribute names. (OpenTelemetry's
    aiohttp-server instrumentation works by replacing aiohttp's Application class, which faust
    has imported by then; this is the same span on OpenTelemetry's own API.)"""
    from aiohttp import web

    @web.middleware
    async def traced(request, handler):
        resource = getattr(request.match_info.route, "resource", None)
        route = resource.canonical if resource is not None else None
        attributes = {"http.request.method": request.method, "url.path": request.path}
        if route:
            attributes["http.route"] = route
        with TRACER.start_as_current_span(
                f"{request.method} {route}" if route else request.method, kind=SpanKind.SERVER,
                context=propagate.extract(dict(request.headers)), attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:
            try:
                response = await handler(request)
            except web.HTTPException as answer:  # aiohttp's own answers (404, 413, ...)
                _answered(span, answer.status)
                raise
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            _answered(span, response.status)
            return response

    return traced


def _answered(span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def outgoing_headers() -> list[tuple[str, bytes]]:
    """The headers of a message sent now: what it is, and the current trace context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return CONTENT_HEADERS + [(name, value.encode()) for name, value in carrier.items()]


def context_of(headers: list[tuple[str, bytes | None]]) -> context.Context:
    """The trace context a message's headers carry (an empty one when none)."""
    carrier = {name: value.decode(errors="replace") for name, value in headers
               if name in ("traceparent", "tracestate") and value is not None}
    return propagate.extract(carrier)


@contextlib.contextmanager
def stage_span(stage: str, topic: str, partition: int, offset: int,
               headers: list[tuple[str, bytes]], job_id: str | None):
    """The span of one stage handling one message, child of the span that sent it."""
    attributes = {"messaging.system": "kafka", "messaging.destination.name": topic,
                  "messaging.kafka.destination.partition": partition,
                  "messaging.kafka.message.offset": offset}
    if job_id:
        attributes["restyle.job_id"] = job_id
    with _consumer_span(stage, context_of(headers), attributes) as span:
        yield span


@contextlib.contextmanager
def batch_span(stage: str, topic: str, headers_of_each: list[list[tuple[str, bytes]]]):
    """The span of one stage handling a batch of messages: a trace of its own, linked to the
    span that sent each message (a batch belongs to no single one of their traces)."""
    senders = (trace.get_current_span(context_of(headers)).get_span_context()
               for headers in headers_of_each)
    links = [trace.Link(sender) for sender in senders if sender.is_valid]
    attributes = {"messaging.system": "kafka", "messaging.destination.name": topic,
                  "messaging.batch.message_count": len(headers_of_each)}
    with _consumer_span(stage, context.Context(), attributes, links) as span:
        yield span


def step_span(name: str, **attributes):
    """A span for one step of the stage running now (reading its inputs, the model call,
    storing its outputs), child of the stage's span: where a stage's time goes, in the trace."""
    return TRACER.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def _consumer_span(name: str, parent: context.Context, attributes: dict, links=()):
    with TRACER.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER,
                                      attributes=attributes, links=links) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def bound_to_current(coroutine_function):
    """coroutine_function, run under the trace context current now (for a send scheduled
    from another thread, such as a render's progress)."""
    captured = context.get_current()

    async def run(*args, **kwargs):
        token = context.attach(captured)
        try:
            return await coroutine_function(*args, **kwargs)
        finally:
            context.detach(token)
    return run
