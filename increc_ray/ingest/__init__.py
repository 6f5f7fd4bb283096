"""Ingest: events in, clean events out.

In: ``POST /events`` bodies (``body``) and files landing in a folder or bucket (``landing``,
read by ``loaders``). Each row is validated, normalised and labelled by the cleaning rules
(``events``: the schemas, ``clean``: the rules), de-duplicated across the whole history
(``dedup``) and either appended to the clean store as a numbered Parquet part or quarantined
with its reason. ``pipeline`` runs it all; ``ray_job`` is the Ray Data pass over the files.
"""
