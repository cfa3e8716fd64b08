"""``fedvit-report``: compare finished runs from their output files.

``load`` (run folders, labels), ``linkmodel`` (the round against link bandwidth),
``plots``, ``markdown`` (``report.md``), ``cli`` (``make_report``, ``main``).
"""
