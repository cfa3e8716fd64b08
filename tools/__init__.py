"""Offline tools that run beside the apps, never inside them (no app package imports this
one; ``tests/unit/test_layout.py`` checks it).

``report/`` (``fedvit-report``), ``experiments.py`` (``fedvit-experiments``),
``simulate.py`` (whole federations in-process under ``run_simulation``), ``sizes.py``
(``fedvit-sizes``), ``pretrain_cli.py`` (``fedvit-pretrain``), ``deploy/`` (the link lab,
process records, per-link transfer times).
"""
