"""Round numbering for a resumed run: the strategy's rounds start after ``round_offset``."""

from __future__ import annotations


class RoundOffset:
    """Mixin (first in the bases): every hook and everything below it, including the
    ``server-round`` that clients see, gets ``server_round + round_offset``."""

    round_offset = 0

    def configure_train(self, server_round: int, *args, **kwargs):
        return super().configure_train(server_round + self.round_offset, *args, **kwargs)

    def configure_evaluate(self, server_round: int, *args, **kwargs):
        return super().configure_evaluate(server_round + self.round_offset, *args, **kwargs)

    def aggregate_train(self, server_round: int, *args, **kwargs):
        return super().aggregate_train(server_round + self.round_offset, *args, **kwargs)

    def aggregate_evaluate(self, server_round: int, *args, **kwargs):
        return super().aggregate_evaluate(server_round + self.round_offset, *args, **kwargs)

    def resume(self, after_round: int, books: list, rejections: list[dict]) -> None:
        """Go on after ``after_round`` with a checkpoint's books and rejections."""
        self.round_offset = after_round
        self.books.rows = list(books)
        self.rejections = list(rejections)
