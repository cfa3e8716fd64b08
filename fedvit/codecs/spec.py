"""The parsed form of ``codec-down`` and ``codec-up``: which codec, and its knobs (standard
library only, so the run config parses codec specs cheaply)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

CODECS = ("none", "fp16", "bf16", "int8", "int4", "topk")
QMAX = {"int8": 127, "int4": 7}  # the block-quantised codecs and their largest level
U32_MAX = 2**32 - 1  # the wire format's header words are uint32


@dataclass(frozen=True)
class CodecSpec:
    """A codec (one of ``CODECS``) and its knobs. ``block_size``: elements per float16 scale
    (int8, int4; even for int4); 128 costs 1/64 byte an element, keeping int8 under 25.5 % and
    int4 under 13 % of fp32. ``topk_fraction``: share of each tensor's elements sent, (0, 1]."""

    name: str
    block_size: int = 128
    topk_fraction: float = 0.1

    def validate(self) -> CodecSpec:
        """``self``; ValueError naming the field, its value and what is allowed."""
        if self.name not in CODECS:
            raise ValueError(f"CodecSpec.name={self.name!r} is not allowed: use one of {CODECS}")
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or not 1 <= bs <= U32_MAX:
            raise ValueError(f"CodecSpec.block_size={bs!r} is not allowed: "
                             f"it must be an integer in [1, {U32_MAX}]")
        if self.name == "int4" and (bs < 2 or bs % 2):
            raise ValueError(f"CodecSpec.block_size={bs!r} is not allowed for int4: "
                             "it must be an even integer >= 2 (two values per byte)")
        f = self.topk_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
            raise ValueError(f"CodecSpec.topk_fraction={f!r} is not allowed: "
                             "it must be a number with 0 < topk_fraction <= 1")
        return self

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """A validated spec from e.g. ``"fp16"``, ``"int4:64"`` (block size) or
        ``"topk:0.05"`` (fraction); ValueError for anything else."""
        name, _, arg = text.strip().partition(":")
        name = name.strip()
        if not arg:
            return cls(name).validate()
        try:
            if name in QMAX:
                return cls(name, block_size=int(arg)).validate()
            if name == "topk":
                return cls(name, topk_fraction=float(arg)).validate()
        except ValueError as err:
            raise ValueError(f"codec {text!r} is not allowed: {err}") from None
        raise ValueError(f"codec {text!r} is not allowed: only int8/int4 (block size) and "
                         f"topk (fraction) take an argument; codecs are {CODECS}")


def topk_count(n: int, fraction: float) -> int:
    """Elements top-k sends of ``n``: ``ceil(fraction × n)`` with ``fraction`` read as the
    decimal it prints as (so 0.1 × 30 is 3, not 4 from binary rounding)."""
    return math.ceil(Fraction(repr(float(fraction))) * n)
