"""Filters for known, harmless log records that third-party imports emit on a CPU-only machine.

torchao (a dev/quant dependency, imported by peft through transformers' torchao quantizer whenever it is installed)
logs one warning per CUDA kernel library it cannot load ("Failed to load .../torchao/_C_....so"), and its enum
registration triggers a torch deprecation notice from torch.utils._pytree ("... is an Enum subclass and is now
natively supported by torch.compile ..."); its int8 matmul module warns that Triton (a GPU compiler) is missing.
None of these says anything about SAFE; `install()` drops exactly these records (any other record of those loggers
still shows). `shared` installs the filters on import, and `stage_a` imports `shared` first, so they are in place
before any SAFE module loads transformers; a script importing transformers models before any SAFE module still
sees the records.
"""

from __future__ import annotations

import logging
import re

KNOWN_NOISE = {
    "torchao": re.compile(r"Failed to load .*torchao/_C[^/]*\.so"),
    "torch.utils._pytree": re.compile(r"is an Enum subclass and is now natively supported by torch\.compile"),
    "torchao.kernel.intmm": re.compile(r"Detected no triton"),
}


class _DropMatching(logging.Filter):
    """Drops the records whose formatted message matches a pattern."""

    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Attach the filters to their loggers (once; later calls do nothing)."""
    for name, pattern in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
