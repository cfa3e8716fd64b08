"""Which codec, and its knobs: the parsed form of ``codec-down`` and ``codec-up``.

Standard library only: the run config parses its codec specs with it
(``AppConfig.down_codec``/``up_codec``), and the codecs themselves live in
``fedvit.codecs.payload`` (encode/decode) and ``fedvit.codecs.format`` (the wire format).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

CODECS = ("none", "fp16", "bf16", "int8", "int4", "topk")
QMAX = {"int8": 127, "int4": 7}  # the block-quantised codecs and their largest level
U32_MAX = 2**32 - 1  # the wire format's header words are uint32


@dataclass(frozen=True)
class CodecSpec:
    """Which codec, and its knobs (``block_size``: int8/int4, ``topk_fraction``: topk).

    The default block of 128 elements is what keeps int8 under 25.5 % and int4 under 13 %
    of fp32 for a ViT-B LoRA update: a float16 scale per 64 elements costs 1/32 byte each.

    Args:
        name: one of ``CODECS``.
        block_size: elements per float16 scale (int8, int4; even for int4).
        topk_fraction: share of each tensor's elements sent, in (0, 1] (topk).
    """

    name: str
    block_size: int = 128
    topk_fraction: float = 0.1

    def validate(self) -> CodecSpec:
        """Check the fields.

        Returns:
            ``self``.

        Raises:
            ValueError: a field is not allowed; the message names it, its value and what
                is allowed.
        """
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
        """A spec from its run-config spelling.

        Args:
            text: ``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4:64"`` (block
                size), ``"topk:0.05"`` (fraction).

        Returns:
            The validated spec (defaults for the knobs not given).

        Raises:
            ValueError: an unknown codec, a bad argument, or an argument the codec does
                not take.
        """
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
    """How many elements top-k sends of a tensor.

    Args:
        n: the tensor's number of elements.
        fraction: ``topk_fraction``, read as the decimal it prints as.

    Returns:
        ``ceil(fraction × n)`` in exact decimal arithmetic (so 0.1 × 30 is 3, not 4 from
        binary rounding).
    """
    return math.ceil(Fraction(repr(float(fraction))) * n)
