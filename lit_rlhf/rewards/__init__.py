"""Rewards as the policy sees them: ``transforms`` (per reward, e.g. log σ(r − r_ref); ``conf/transform``),
``aggregators`` (combine several; ``conf/aggregator``), ``reference`` (r_ref from the SFT policy's own
samples, cached) and ``ensemble`` (several reward models as one; ``conf/reward/*_ensemble``)."""
