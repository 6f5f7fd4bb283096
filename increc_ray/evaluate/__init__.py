"""Evaluation, apart from the product: how well the learner recommends.

``ranking``: full-ranking HR@K / NDCG@K. ``offline``: leave-one-out by time
(``increc evaluate offline``). ``prequential``: the test-then-train replay of an event stream,
with the compared ``strategies`` (incremental, retraining, static, ...) run by ``stream``
(``increc evaluate stream``) and drawn by ``plot``. ``synthetic``: a planted-structure event
stream for the demo and tests.
"""
