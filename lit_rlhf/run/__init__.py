"""What ``train.py`` runs.

``pipeline`` instantiates and fits a task; ``stages`` builds and caches the SFT and reward-model stages a
policy run needs; ``record`` writes ``run.json`` (resume and mismatch checks); ``reporting``, ``summary``
and ``card`` say how a run ended; ``sweep`` writes a ``-m`` sweep's table; ``strategies``, ``checkpoint``,
``errors`` (one-line user errors, exit 2) and ``resolvers`` (the config resolvers) serve them.
"""
