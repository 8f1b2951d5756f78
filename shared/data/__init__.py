"""Data: the common sample schema, dataset loaders, audio I/O and manifest checks."""
