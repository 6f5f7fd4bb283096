"""Learning: clean events in, weight versions out.

``vocab`` maps item ids to rows of ``model`` (the transformer). ``learner`` is the update step
(observe new events, then mini-batch updates with replay), with its step rules in ``optim``,
its published moving average in ``ema`` and its resumable state in ``checkpoint``. ``train``
is the Ray Train worker that reads the clean store, updates, checkpoints and publishes, and
the supervisor that keeps it running.
"""
