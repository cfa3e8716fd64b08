"""Comparisons in words that match their numbers (the commands' printed lines)."""

from __future__ import annotations


def times(ours: float, theirs: float) -> str:
    """How ``ours`` compares with ``theirs``: ``'230x fewer'``, ``'1.5x more'`` (3
    significant digits) or ``'the same'``.

    Args:
        ours: a positive amount (bytes, seconds...).
        theirs: the amount it is compared with, positive.
    """
    if ours == theirs:
        return "the same"
    if ours < theirs:
        return f"{theirs / ours:.3g}x fewer"
    return f"{ours / theirs:.3g}x more"
