"""Stage A: the audio fusion model and its training."""

import shared  # noqa: F401  (its import drops known torchao import warnings before transformers loads torchao)
