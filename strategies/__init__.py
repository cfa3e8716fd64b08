"""Strategies: what is exchanged and how it is aggregated; bandwidth books for any."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.serverapp.strategy import FedAvg

from fedvit.config import AppConfig
from strategies.bandwidth import BandwidthTracking, BookRow, Books
from strategies.exchange import ExchangeCodecs
from strategies.fedlora import FedLoRA
from strategies.offset import RoundOffset
from strategies.sampling import SeededSampling
from strategies.timing import RoundLog, RoundTiming


class TrackedFedAvg(RoundOffset, BandwidthTracking, RoundTiming, ExchangeCodecs, SeededSampling,
                    FedAvg):
    """FedAvg over the whole model, with bandwidth books, round timing, seeded sampling."""


class TrackedFedLoRA(RoundOffset, BandwidthTracking, RoundTiming, ExchangeCodecs, SeededSampling,
                     FedLoRA):
    """FedLoRA (adapters + head), with bandwidth books, round timing, seeded sampling."""


def make_strategy(cfg: AppConfig, exchanged_keys: Iterable[str]) -> FedAvg:
    """The strategy the config names, with bandwidth tracking."""
    common = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes,
        "min_available_nodes": cfg.min_nodes,
        "codec_down": cfg.down_codec,
        "codec_up": cfg.up_codec,
        "seed": cfg.seed,  # the sample of each round: seed, round and partitions only
        "query_timeout_s": cfg.round_timeout_s,
    }
    # Replies are summed in a fixed order (by partition), so a resumed run is bit-identical.
    if cfg.strategy == "fedavg":
        return TrackedFedAvg(**common)
    return TrackedFedLoRA(exchanged_keys=exchanged_keys, **common)


__all__ = ["BandwidthTracking", "BookRow", "Books", "FedLoRA", "RoundLog", "RoundTiming",
           "SeededSampling", "TrackedFedAvg", "TrackedFedLoRA", "make_strategy"]
