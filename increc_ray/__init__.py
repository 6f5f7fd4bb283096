"""increc_ray: a transformer sequential recommender kept fresh by incremental updates on Ray."""

__version__ = "0.1.0"
