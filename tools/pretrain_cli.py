"""``fedvit-pretrain``: build (or rebuild) the offline default's public backbone by hand.

The server builds it on first use anyway (``fedvit.model.pretrain.public_backbone``); this command
builds it ahead of a run, or again with ``--force``, and says where it is cached.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from flwr.common.config import parse_config_args

from fedvit.config.appconfig import AppConfig
from fedvit.model.pretrain import backbone_path, build


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``fedvit-pretrain``.

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``): ``--force`` rebuilds a cached
            backbone, ``--run-config 'key=value ...'`` overrides the run config.
    """
    parser = argparse.ArgumentParser(prog="fedvit-pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--run-config", default="", help="overrides, 'key=value key=value'")
    args = parser.parse_args(argv)
    cfg = AppConfig.from_run_config(parse_config_args([args.run_config]) if args.run_config
                                    else {})
    path = backbone_path(cfg)
    if path.is_file() and not args.force:
        print(f"cached: {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    result = build(cfg, path)
    print(f"built {path} in {result['seconds']:.1f} s "
          f"(public-split accuracy {result['public-accuracy']:.3f})")


if __name__ == "__main__":
    main()
