"""``fedvit-replay``: a recorded run's time to accuracy on other links and devices.

``traces`` (link trace files), ``specs`` (``--links``/``--devices``), ``engine``
(``replay_run``: the rounds projected back to back on a clock), ``rank`` (time to target,
which run wins, where the two best swap), ``outputs`` (``replay.md/csv/json/png``),
``cli`` (``main``).
"""
