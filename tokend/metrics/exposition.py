"""The metrics listener's ``/metrics`` resource and its encoding; with ``--workers N``, the
union of every worker's exposition (each labelled ``worker="<index>"``) and the parent's own.
twisted.web lives here: only the edges (tap, daemon, web) import this module."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from tokend.metrics.collectors import WorkerScrapes


class _Exposition(Resource):
    """``GET /metrics``: the registry in the format the scraper asks for (Prometheus text, or
    OpenMetrics), encoded by prometheus_client on the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        body: bytes = encoder(self._registry)
        return body


def metrics_resource(registry: CollectorRegistry) -> Resource:
    """The metrics listener's resource tree: ``/metrics`` and nothing else.

    Not ``prometheus_client.twisted.MetricsResource``: it encodes on the reactor's thread pool
    (WSGI), and under load that thread's contention for the GIL with the reactor thread cost
    10-20 % of anonymous throughput with a scrape per second (bench/metrics_cost.py). One
    exposition takes a millisecond or two of the reactor's time instead.
    """
    root = _Root()
    root.putChild(b"metrics", cast(IResource, _Exposition(registry)))
    return root


class _Root(Resource):
    def getChild(self, path: bytes, request: Any) -> Any:
        return notFound()


WORKER_LABEL = "worker"


class _Union:
    """A collector yielding families already gathered, once each."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def union_of(
    parent: CollectorRegistry,
    answers: Sequence[tuple[int, bytes]],
    unreadable: Callable[[int], None] = lambda worker: None,
) -> CollectorRegistry:
    """One registry holding the parent's families and every worker's, each worker's samples
    labelled ``worker="<index>"``, merged by family so each family's HELP and TYPE appear once.

    A worker's answer that does not parse is left out and reported to ``unreadable``. The text
    format carries a counter's ``_created`` samples as a gauge family of their own; they are
    put back into their counter (or histogram) so the OpenMetrics encoder writes them right.
    """
    families: dict[str, Metric] = {}
    for family in parent.collect():
        _merge(families, family, family.samples)
    for index, body in answers:
        try:
            parsed = list(text_string_to_metric_families(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, IndexError, KeyError):
            unreadable(index)
            continue
        label = str(index)
        for family in parsed:
            samples = [
                Sample(s.name, {**s.labels, WORKER_LABEL: label}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            ]
            _merge(families, family, samples)
    for family in families.values():
        if family.type in ("counter", "histogram", "summary"):
            family.samples[:] = _grouped(family.samples)
    union = CollectorRegistry(auto_describe=False)
    union.register(_Union(families.values()))
    return union


def _grouped(samples: list[Sample]) -> list[Sample]:
    """One label set's samples together (``_total`` then ``_created``; buckets, ``_count``,
    ``_sum``, ``_created``), as OpenMetrics demands, in the order the label sets came."""
    groups: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    for sample in samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("le", "quantile")))
        groups.setdefault(key, []).append(sample)
    return [sample for group in groups.values() for sample in group]


def _merge(families: dict[str, Metric], family: Metric, samples: list[Sample]) -> None:
    name = family.name
    if family.type == "gauge" and name.endswith("_created"):
        base = families.get(name[: -len("_created")])
        if base is not None and base.type in ("counter", "histogram", "summary"):
            base.samples.extend(samples)
            return
    merged = families.get(name)
    if merged is None:
        merged = Metric(name, family.documentation, family.type, family.unit)
        families[name] = merged
    merged.samples.extend(samples)


class _WorkersExposition(Resource):
    """``GET /metrics`` in the parent of ``--workers N``: the union of every worker's metrics
    and its own, gathered per scrape and encoded by prometheus_client."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, workers: WorkerScrapes) -> None:
        super().__init__()
        self._registry = registry
        self._workers = workers

    def render_GET(self, request: Any) -> Any:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        finished = request.notifyFinish()
        finished.addErrback(lambda reason: None)

        def answer(answers: list[tuple[int, bytes]]) -> None:
            if finished.called:
                return  # the scraper gave up
            union = union_of(self._registry, answers, self._workers.unreadable)
            request.setHeader(b"Content-Type", content_type.encode("ascii"))
            request.write(encoder(union))
            request.finish()

        def failed(reason: Failure) -> None:
            if not finished.called:
                request.setResponseCode(500)
                request.finish()

        self._workers.scrape().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


def workers_metrics_resource(registry: CollectorRegistry, workers: WorkerScrapes) -> Resource:
    """The parent's metrics listener with ``--workers N``: ``/metrics`` and nothing else."""
    root = _Root()
    root.putChild(b"metrics", cast(IResource, _WorkersExposition(registry, workers)))
    return root
