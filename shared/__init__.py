"""Common package for both stages: data, model loading, metrics, logging."""

from shared import import_noise

import_noise.install()  # known torchao / torch import warnings on CPU-only machines
