"""Known third-party import warnings are dropped, by exact pattern; other records of the same loggers still show."""

import logging

import pytest

from shared import import_noise

NOISE = {
    "torchao": "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
               "Could not load this library",
    "torch.utils._pytree": "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by "
                           "torch.compile as an opaque value type.",
    "torchao.kernel.intmm": "Warning: Detected no triton, on systems without Triton certain kernels will not work",
}


@pytest.mark.parametrize("name", sorted(NOISE))
def test_known_import_noise_is_dropped_and_other_records_show(name: str, caplog: pytest.LogCaptureFixture) -> None:
    import_noise.install()
    import_noise.install()  # idempotent: one filter per logger
    logger = logging.getLogger(name)
    assert sum(isinstance(f, import_noise._DropMatching) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=name):
        logger.warning(NOISE[name])
        logger.warning("Failed to load the user's checkpoint")
    assert [r.getMessage() for r in caplog.records] == ["Failed to load the user's checkpoint"]
