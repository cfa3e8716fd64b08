"""Strategies and the add-ons stacked around them (``strategies.factory``)."""

from __future__ import annotations

from strategies.bandwidth import BookRow, Books
from strategies.factory import FedVitStrategy, build_strategy
from strategies.fedlora import FedLoRA
from strategies.timing import ClientReport, RoundLog

__all__ = ["BookRow", "Books", "ClientReport", "FedLoRA", "FedVitStrategy", "RoundLog",
           "build_strategy"]
