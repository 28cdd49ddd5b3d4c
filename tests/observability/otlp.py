"""An OTLP/HTTP trace receiver for tests: what docproc's processes export, kept as spans."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    kind: int
    error: bool
    attributes: dict[str, Any]
    links: tuple[str, ...]
    """The trace ids this span links to."""
    start: int


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value") or "string_value")


def _span(span: Any, resource: Any) -> Span:
    service = next((a.value for a in resource.attributes if a.key == "service.name"), None)
    return Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        name=span.name,
        service=str(_value(service)) if service is not None else "",
        kind=span.kind,
        error=span.status.code == 2,
        attributes={a.key: _value(a.value) for a in span.attributes},
        links=tuple(link.trace_id.hex() for link in span.links),
        start=span.start_time_unix_nano,
    )


class Receiver:
    """Listens on 127.0.0.1:`port` for POST /v1/traces (protobuf), as a collector would."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                receiver._keep(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _keep(self, request: ExportTraceServiceRequest) -> None:
        found = [
            _span(span, resource_spans.resource)
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self.spans.extend(found)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class Trace:
    """The spans of one trace, and its tree."""

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans
        self.by_id = {span.span_id: span for span in spans}

    def named(self, name: str) -> list[Span]:
        return sorted((s for s in self.spans if s.name == name), key=lambda s: s.start)

    def one(self, name: str) -> Span:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}:\n{self}"
        return found[0]

    def parent(self, span: Span) -> Span:
        parent = self.by_id.get(span.parent_id)
        assert parent is not None, f"no parent of {span.name} in the trace:\n{self}"
        return parent

    def ancestors(self, span: Span) -> list[str]:
        """The names of `span`'s ancestors, nearest first."""
        names = []
        while span.parent_id and span.parent_id in self.by_id:
            span = self.by_id[span.parent_id]
            names.append(span.name)
        return names

    def __str__(self) -> str:
        children: dict[str, list[Span]] = {}
        for span in sorted(self.spans, key=lambda s: s.start):
            children.setdefault(span.parent_id if span.parent_id in self.by_id else "", []).append(
                span
            )
        lines: list[str] = []

        def walk(parent: str, depth: int) -> None:
            for span in children.get(parent, []):
                lines.append(
                    f"{'  ' * depth}{span.name} [{span.service}]{' !' if span.error else ''}"
                )
                walk(span.span_id, depth + 1)

        walk("", 0)
        return "\n".join(lines)
