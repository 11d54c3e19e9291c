"""trace (priority 50, wraps the chain): an OpenTelemetry server span per gateway hop and a client span for the
upstream call, joined across processes by W3C `traceparent`, so one call from a province to a national database
is one trace.

access: continue the inbound traceparent (or start a trace) with the server span. upstream_start (called by the
chain once access passed): open the client span and put its traceparent on ctx.traceparent for the gateway to send
to the next gateway or the connector. response: end the client span at ctx.response_in. log: end the server span.

Export: OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set; JSON lines to LIENTHONG_TRACE_FILE when set (tests
read it); both may be on. Sampling: parent-based, ratio from the config for new traces.
"""

from __future__ import annotations

import os
import random
import re
import threading
from collections.abc import Sequence
from typing import Any

import orjson
from opentelemetry import trace as otel
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from policies.base import CallContext, PolicyBase
from policies.chain import ChainConfig

PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class JsonLinesExporter(SpanExporter):
    """One JSON object per finished span, appended to a file shared safely by several processes (O_APPEND)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(orjson.dumps(_span_dict(s), option=orjson.OPT_APPEND_NEWLINE) for s in spans)
        with self._lock:
            if self._fd >= 0:
                os.write(self._fd, lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _span_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "service": span.resource.attributes.get("service.name"),
        "attributes": dict(span.attributes or {}),
    }


def _ns(ts: float) -> int | None:
    return int(ts * 1e9) if ts else None


class Trace(PolicyBase):
    name = "trace"
    priority = 50

    def __init__(self, gateway: str, ratio: float) -> None:
        self.gateway = gateway
        resource = Resource.create({"service.name": f"lienthong-gateway-{gateway}", "lienthong.gateway": gateway})
        self.ratio = ratio
        # the sampling decision is taken in access (below); the SDK's own sampler then keeps a sampled parent's choice
        self.provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace_file = os.environ.get("LIENTHONG_TRACE_FILE")
        if trace_file:
            exporter = JsonLinesExporter(trace_file)
            self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
        self.tracer = self.provider.get_tracer("lienthong.gateway")
        # spans live outside CallContext (a plain dataclass the router owns), keyed by the context object
        self._server: dict[int, Span] = {}
        self._client: dict[int, Span] = {}

    def access(self, ctx: CallContext) -> None:
        inbound = ctx.headers.get("traceparent")
        m = TRACEPARENT.match(inbound) if inbound else None
        sampled = bool(int(m.group(3), 16) & 1) if m else random.random() < self.ratio
        if not sampled:
            # the SDK would build non-recording spans at some 50 µs a call; the same propagation costs nothing
            trace_id = m.group(1) if m else f"{random.getrandbits(128) or 1:032x}"
            ctx.traceparent = f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-00"
            return
        parent = PROPAGATOR.extract({k: v for k, v in ctx.headers.items() if k in ("traceparent", "tracestate")})
        span = self.tracer.start_span(
            f"{ctx.method} {ctx.service_id or 'gateway'}",  # never the raw path: it may hold a personal ID
            context=parent,
            kind=SpanKind.SERVER,
            start_time=_ns(ctx.request_in),
            attributes={
                "lienthong.gateway": self.gateway,
                "lienthong.role": ctx.role,
                "lienthong.transaction_id": ctx.transaction_id,
                "http.request.method": ctx.method,
            },
        )
        self._server[id(ctx)] = span
        ctx.traceparent = _traceparent(span)

    def upstream_start(self, ctx: CallContext) -> None:
        server = self._server.get(id(ctx))
        if server is None:
            if ctx.traceparent:  # unsampled: a fresh span id for the outbound hop, same trace
                ctx.traceparent = f"{ctx.traceparent[:36]}{random.getrandbits(64) or 1:016x}-00"
            return
        target = "connector" if ctx.role != "home" else (ctx.provider_gateway or "gateway")
        span = self.tracer.start_span(
            f"upstream {target}",
            context=otel.set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes={"lienthong.gateway": self.gateway, "lienthong.upstream": target},
        )
        self._client[id(ctx)] = span
        ctx.traceparent = _traceparent(span)

    def response(self, ctx: CallContext) -> None:
        span = self._client.pop(id(ctx), None)
        if span is not None:
            span.set_attribute("http.response.status_code", ctx.status)
            span.end(end_time=_ns(ctx.response_in))

    def log(self, ctx: CallContext) -> None:
        client = self._client.pop(id(ctx), None)
        if client is not None:
            client.end(end_time=_ns(ctx.response_in))
        span = self._server.pop(id(ctx), None)
        if span is None:
            return
        span.set_attribute("http.response.status_code", ctx.status)
        if ctx.client:
            span.set_attribute("lienthong.client", ctx.client)
        if ctx.endpoint is not None:
            span.set_attribute("http.route", ctx.endpoint.path)
        if ctx.error_code:
            span.set_attribute("lienthong.error_code", ctx.error_code)
        if ctx.status >= 500 or ctx.status == 0:
            span.set_status(Status(StatusCode.ERROR, ctx.error_code or str(ctx.status)))
        span.end(end_time=_ns(ctx.response_out))

    async def stop(self) -> None:
        self.provider.force_flush()
        self.provider.shutdown()


def _traceparent(span: Span) -> str:
    c = span.get_span_context()
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def build(cfg: ChainConfig) -> Trace:
    return Trace(cfg.gateway, cfg.trace_sample_ratio)
