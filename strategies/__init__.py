"""Strategies: what is exchanged and how it is aggregated, with add-ons stacked around it
(``strategies.factory``): bandwidth books, round timing, codecs, seeded sampling."""

from __future__ import annotations

from strategies.books import BookRow, Books
from strategies.factory import FedVitStrategy, build_strategy
from strategies.fedlora import FedLoRA
from strategies.timing import ClientReport, RoundLog

__all__ = ["BookRow", "Books", "ClientReport", "FedLoRA", "FedVitStrategy", "RoundLog",
           "build_strategy"]
