"""``python -m tools.deploy.linklab start|stop`` (see ``tools.deploy.linklab.cli``)."""

import sys

from tools.deploy.linklab.cli import main

if __name__ == "__main__":
    sys.exit(main())
