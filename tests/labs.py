"""The link lab's tests run only where it can: root and iproute2 (``ip netns``, ``tc``).

``needs_root`` skips a test elsewhere, with the reason (``SKIP``, empty where it can run).
"""

from __future__ import annotations

import pytest

from tools.deploy.linklab.netns import LinkLabError, check_privileges

try:
    check_privileges()
    SKIP = ""
except LinkLabError as err:
    SKIP = str(err)

needs_root = pytest.mark.skipif(bool(SKIP), reason=f"link lab unavailable: {SKIP}")
