"""``python -m tools.replay``: the same as ``fedvit-replay``."""

from tools.replay.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
