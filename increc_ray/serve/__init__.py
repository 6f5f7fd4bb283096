"""Serving: the Serve app and its deployments.

In: cleaned events (from ``ingest``) for user histories and popularity; weight versions (from
``learn``) through the ``WeightRegistry`` in the object store. Out: ``GET /recommend`` answers,
``/status``, and the ``increc_`` serving metrics. ``app.app_builder`` is what
``serve_config.yaml`` imports.
"""
