"""Common package for both stages: data, model loading, metrics, logging."""
