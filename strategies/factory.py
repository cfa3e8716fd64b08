"""The one place that stacks the strategy add-ons, and a round's path through them.

Flower's ``Strategy.start`` calls the outermost layer; each hands the call down and the
answer comes back up through it. Top to bottom, what each adds::

    layer               configure_train / _evaluate         aggregate_train / _evaluate
    RoundOffset         round + offset (resumed runs)       round + offset
    StopOnCommonFailure counts the train messages           NodesFailed where every node of
                                                            a train round failed alike
    BandwidthTracking   hands down a BookingGrid (books     one up row per node sent to:
                        the sampler's queries); one down    reply cross-checked with its
                        row per message coming back up      report, its error, or no reply
    RoundTiming         times the call below (configure_s) keeps each ok reply's report;
                                                            times the call (aggregate_s)
    ExchangeCodecs      encodes with codec-down, then       train: unpacks, decodes, checks,
                        packs (pack-tensors)                rejects, orders by partition
    SeededSampling      inner addresses every node; queries -
                        unknown partitions, keeps the sample
    FedAvg | FedLoRA    one message per node offered        examples-weighted mean (FedLoRA:
                        (server-round into the config)      + the LoRA aggregation error)

BandwidthTracking sits outside RoundTiming, so the books' measuring is not counted as
configure or aggregation time. Every layer sees rounds with the resume offset, as the
clients do (FedAvg writes them into the messages' config).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedvit.config.appconfig import AppConfig
from fedvit.keys import BYTES_KEYS, METRICS
from strategies.bandwidth import BandwidthTracking, BookRow, Books
from strategies.exchange import ExchangeCodecs
from strategies.failures import StopOnCommonFailure
from strategies.fedlora import FedLoRA
from strategies.sampling import SeededSampling
from strategies.timing import RoundLog, RoundTiming
from strategies.wrapper import RoundOffset, StrategyWrapper


class FedVitStrategy(StrategyWrapper):
    """The stack ``build_strategy`` returns: run it with ``Strategy.start``; ``resume`` before.
    Read while and after it runs: ``books`` (every message measured, and the cross-check
    failures), ``timeline`` (each round, resume offset included) and ``rejections`` (every
    rejected reply: ``{"round", "node-id", "reason"}``), the layers' own objects."""

    def __init__(self, offset: RoundOffset, books: BandwidthTracking, timing: RoundTiming,
                 codecs: ExchangeCodecs) -> None:
        super().__init__(offset)
        self._layers = (offset, books, codecs)
        self.books: Books = books.books
        self.timeline: dict[int, RoundLog] = timing.timeline
        self.rejections: list[dict] = codecs.rejections

    def resume(self, after_round: int, books: list[BookRow], rejections: list[dict]) -> None:
        """Go on from a checkpoint: rounds from ``after_round + 1``, its books and rejections;
        each layer through its own ``resume``."""
        offset, bandwidth, codecs = self._layers
        offset.resume(after_round)
        bandwidth.resume(books)
        codecs.resume(rejections)


def aggregate_reply_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """FedAvg's ``*_metrics_aggr_fn``: losses and accuracies as Flower's examples-weighted
    mean; byte counters and ``weighted_by_key`` (examples) summed. Per-node figures (stamps,
    links, throughput) are left out: ``RoundTiming`` and the books keep them."""
    means = [RecordDict({METRICS: MetricRecord({k: v for k, v in r[METRICS].items() if
                                                k.endswith(("-loss", "-accuracy"))
                                                or k == weighted_by_key})}) for r in records]
    agg = aggregate_metricrecords(means, weighted_by_key)
    agg[weighted_by_key] = sum(int(r[METRICS][weighted_by_key]) for r in records)
    for key in BYTES_KEYS:
        if all(key in r[METRICS] for r in records):
            agg[key] = sum(int(r[METRICS][key]) for r in records)
    return agg


def build_strategy(cfg: AppConfig, exchanged_keys: Iterable[str]) -> FedVitStrategy:
    """The strategy ``cfg`` names with every add-on, in the module's order
    (``exchanged_keys``: the tensors that travel, FedLoRA's adapters and head)."""
    every_node = {  # the sampler chooses the nodes; FedAvg sends to all it is offered
        "fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes, "min_available_nodes": cfg.min_nodes,
        "train_metrics_aggr_fn": aggregate_reply_metrics,
        "evaluate_metrics_aggr_fn": aggregate_reply_metrics}
    base = (FedAvg(**every_node) if cfg.strategy == "fedavg"
            else FedLoRA(exchanged_keys=exchanged_keys, **every_node))
    sampling = SeededSampling(base, fraction_train=cfg.fraction_train,
                              fraction_evaluate=cfg.fraction_evaluate, min_nodes=cfg.min_nodes,
                              seed=cfg.seed, query_timeout_s=cfg.round_timeout_s)
    codecs = ExchangeCodecs(sampling, cfg.down_codec, cfg.up_codec, base.arrayrecord_key,
                            cfg.pack_tensors)
    books = BandwidthTracking(timing := RoundTiming(codecs))
    offset = RoundOffset(StopOnCommonFailure(books))
    return FedVitStrategy(offset, books, timing, codecs)
