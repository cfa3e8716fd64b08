"""``fedvit-sizes``: what each strategy exchanges per client per round, without training.

Builds the models with random weights (no download) and measures the exchanged tensors
exactly as the bandwidth books do (``fedvit.wire.measure``), in both layouts: one Array per tensor
and packed (``pack-tensors``, ``fedvit.wire.packing``). Objects per message count the message
itself and every object of its content (Flower 1.41 moves each in its own HTTP call).
"""

from __future__ import annotations

import argparse
import dataclasses

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedvit.codecs.payload import CodecSpec, encode, encoded_bytes
from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.config.rules import STRATEGIES
from fedvit.model.build import build_model
from fedvit.model.tensors import count_parameters, exchanged_state
from fedvit.schema import MB
from fedvit.wire.measure import message_size, tensor_bytes
from fedvit.wire.packing import pack
from tools.words import times

CODEC_ROWS = ("fp16", "bf16", "int8", "int4", "topk:0.1")
FLAGS = ("model-name", "img-size", "patch-size", "lora-r", "lora-alpha", "lora-dropout",
         "lora-target-modules")


@dataclasses.dataclass(frozen=True)
class ExchangeSize:
    """One strategy's exchange: per message, and per client per round (down + up)."""

    strategy: str
    parameters: int
    exchanged_parameters: int
    tensors: int
    tensor_bytes: int
    content_bytes: int
    objects: int  # per message, one Array per tensor
    packed_content_bytes: int
    packed_objects: int  # per message, packed
    codec_bytes: dict[str, int]  # encoded tensor bytes per codec

    @property
    def per_client_round_bytes(self) -> int:
        return 2 * self.content_bytes


def exchange_size(cfg: AppConfig, num_classes: int) -> ExchangeSize:
    """Measure what ``cfg.strategy`` puts in one train message."""
    model = build_model(cfg, num_classes)
    state = exchanged_state(model)
    arrays = {k: v.numpy() for k, v in state.items()}
    config = ConfigRecord({"server-round": 1})
    content = RecordDict({"arrays": ArrayRecord(state), "config": config})
    nbytes, objects = message_size(content)
    packed_bytes, packed_objects = message_size(RecordDict({"arrays": pack(arrays),
                                                            "config": config}))
    codec_bytes = {c: encoded_bytes(encode(CodecSpec.parse(c), arrays)) for c in CODEC_ROWS}
    return ExchangeSize(cfg.strategy, count_parameters(model)[0],
                        sum(t.numel() for t in state.values()), len(state),
                        tensor_bytes(content), nbytes, 1 + objects, packed_bytes,
                        1 + packed_objects, codec_bytes)


def report(cfg: AppConfig, num_classes: int) -> list[ExchangeSize]:
    """Both strategies' sizes for the same model settings."""
    return [exchange_size(dataclasses.replace(cfg, strategy=s), num_classes)
            for s in STRATEGIES]


def format_report(cfg: AppConfig, num_classes: int, sizes: list[ExchangeSize]) -> str:
    lines = [
        f"{cfg.model_name}, {num_classes} classes, img {cfg.img_size}, LoRA r={cfg.lora_r} "
        f"alpha={cfg.lora_alpha:g} on {cfg.lora_target_modules} (+ head); random weights",
        f"{'strategy':<9}{'model params':>14}{'exchanged params':>18}{'tensors':>9}"
        f"{'fp32 MB/msg':>13}{'serialized MB/msg':>19}{'MB/client/round':>17}"
        f"{'objects/msg':>13}{'packed':>8}{'packed MB/msg':>15}",
    ]
    for s in sizes:
        lines.append(
            f"{s.strategy:<9}{s.parameters:>14,}{s.exchanged_parameters:>18,}{s.tensors:>9}"
            f"{s.tensor_bytes / MB:>13.3f}{s.content_bytes / MB:>19.3f}"
            f"{s.per_client_round_bytes / MB:>17.3f}{s.objects:>13,}{s.packed_objects:>8,}"
            f"{s.packed_content_bytes / MB:>15.3f}"
        )
    full, lora = sizes
    lines.append(
        f"fedlora / fedavg: {lora.exchanged_parameters / full.exchanged_parameters:.3%} of "
        f"the parameters, {lora.content_bytes / full.content_bytes:.3%} of the bytes "
        f"({times(lora.content_bytes, full.content_bytes)})"
    )
    lines.append("")
    lines.append("encoded tensor bytes per message by codec (headers, scales, indices "
                 "included; topk sizes depend on the values):")
    lines.append(f"{'codec':<10}" + "".join(f"{s.strategy + ' MB':>14}{'% fp32':>9}"
                                            for s in sizes))
    for codec in CODEC_ROWS:
        cells = [(s.codec_bytes[codec], s.tensor_bytes) for s in sizes]
        lines.append(f"{codec:<10}" + "".join(f"{b / MB:>14.3f}{100 * b / fp32:>8.2f}%"
                                              for b, fp32 in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``fedvit-sizes``: print both strategies' exchange sizes.

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``): ``--num-classes`` and the
            model flags of ``FLAGS`` (run-config keys).
    """
    parser = argparse.ArgumentParser(prog="fedvit-sizes", description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=10,
                        help="classes of the classifier head (default: 10, digits)")
    for flag in FLAGS:
        parser.add_argument(f"--{flag}", default=None,
                            help=f"the run-config key '{flag}' (default: pyproject.toml's)")
    args = parser.parse_args(argv)
    overrides = {"weights-path": "", "pretrained": False}
    for flag in FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            overrides[flag] = _typed(value)
    try:
        cfg = AppConfig.from_run_config(overrides)
    except ConfigError as err:
        parser.error(str(err))
    print(format_report(cfg, args.num_classes, report(cfg, args.num_classes)))


def _typed(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


if __name__ == "__main__":
    main()
