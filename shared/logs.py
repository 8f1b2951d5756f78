"""Logging set-up shared by every command-line entry point, and the wandb mode every wandb run uses."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with verbose, or SAFE_LOG_LEVEL), one format for all tools."""
    level = "DEBUG" if verbose else os.environ.get("SAFE_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def wandb_mode() -> str:
    """WANDB_MODE if set, else online with an API key, else offline (passed to wandb.init explicitly)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    log.info("wandb runs offline (no WANDB_API_KEY); upload later with `wandb sync <run_dir>/wandb/offline-run-*`")
    return "offline"
