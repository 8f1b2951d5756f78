"""Logging set-up shared by every command-line entry point."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with verbose, or SAFE_LOG_LEVEL), one format for all tools."""
    level = "DEBUG" if verbose else os.environ.get("SAFE_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
