"""Making rollouts: ``rollout`` (the :class:`Rollout` batch, sampling under a pinned distribution, log-probs),
``decoding`` (per-row seeds and seeded Gumbel-max decoding, so DDP equals one process) and ``evaluation``
(held-out samples for the gold evaluation)."""
