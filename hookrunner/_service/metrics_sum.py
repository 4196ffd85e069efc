"""One /metrics page for a service of several processes: the sum of their pages.

Each worker has its own registry (its counters, its hook histograms, its plugins' metrics), rendered in its own
process. prometheus_client's multiprocess mode would need every metric, plugins' included, to be made for it (and
a directory of memory-mapped files); summing the rendered pages needs nothing of the plugins: the same family,
sample name and labels from every process add up (counters, gauges, histogram buckets, sums and counts),
``_created`` keeps the earliest, and ``process_*`` families (each process's CPU, memory, descriptors) are not
summed but labelled with their ``worker``.

A worker that is started again counts from zero, which would make the summed counters drop: Prometheus reads a
drop as a reset of the whole series and ``rate()`` jumps. ``CounterFloors`` keeps every summed counter from ever
going down: what a dead worker had counted is carried on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["summed_page", "CounterFloors"]

#: Families about one process, shown per process: summing them would describe no process at all.
PER_PROCESS_PREFIXES = ("process_", "python_")
#: Families whose samples only grow (but ``_created``).
COUNTING_TYPES = frozenset({"counter", "histogram", "summary"})

_Key = tuple[str, tuple[tuple[str, str], ...]]


class CounterFloors:
    """The last value shown of every summed counter sample, and what is added to keep it from going down."""

    def __init__(self) -> None:
        self._last: dict[_Key, float] = {}
        self._carried: dict[_Key, float] = {}

    def shown(self, key: _Key, value: float) -> float:
        value += self._carried.get(key, 0.0)
        last = self._last.get(key, value)
        if value < last:  # a worker started again from zero: carry what it had counted
            self._carried[key] = self._carried.get(key, 0.0) + last - value
            value = last
        self._last[key] = value
        return value


def summed_page(
    pages: Sequence[tuple[str, bytes]], *, owned_by_first: Collection[str] = (), floors: CounterFloors | None = None
) -> bytes:
    """The pages (``(process label, exposition text)``) summed into one. The families named in
    ``owned_by_first`` come from the first page only (the supervisor's call book, which already counts every
    worker's calls); with ``floors``, summed counters never go down from one page to the next."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[_Key, float]] = {}
    for position, (label, text) in enumerate(pages):
        for family in text_string_to_metric_families(text.decode("utf-8")):
            if position > 0 and family.name in owned_by_first:
                continue
            per_process = family.name.startswith(PER_PROCESS_PREFIXES)
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                labels = {**sample.labels, "worker": label} if per_process else sample.labels
                key = (sample.name, tuple(sorted(labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    for name, family in families.items():
        floor = floors if family.type in COUNTING_TYPES and not name.startswith(PER_PROCESS_PREFIXES) else None
        for key, value in values[name].items():
            sample_name, label_pairs = key
            if floor is not None and not sample_name.endswith("_created"):
                value = floor.shown(key, value)
            family.add_sample(sample_name, dict(label_pairs), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
