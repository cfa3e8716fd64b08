"""``python -m tools.report``: the same as ``fedvit-report``."""

from tools.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
