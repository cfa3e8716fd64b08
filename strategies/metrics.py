"""How the replies' metrics are aggregated: FedAvg's ``*_metrics_aggr_fn`` for this app."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedvit.keys import BYTES_KEYS, METRICS


def averaged(key: str) -> bool:
    """Whether a reply metric is averaged over nodes: losses and accuracies only."""
    return key.endswith(("-loss", "-accuracy"))


def aggregate_reply_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Losses and accuracies as Flower's examples-weighted mean; byte counters and
    ``weighted_by_key`` (examples) summed. Per-node bookkeeping (``partition-id``, ``t-*``
    stamps, ``time-*``, links, throughput) is left out: ``RoundTiming`` and the books keep
    it per node."""
    means = [RecordDict({METRICS: MetricRecord(
        {k: v for k, v in r[METRICS].items() if averaged(k) or k == weighted_by_key})})
        for r in records]
    agg = aggregate_metricrecords(means, weighted_by_key)
    agg[weighted_by_key] = sum(int(r[METRICS][weighted_by_key]) for r in records)
    for key in BYTES_KEYS:
        if all(key in r[METRICS] for r in records):
            agg[key] = sum(int(r[METRICS][key]) for r in records)
    return agg
