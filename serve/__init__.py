"""Deployment: `safe-answer` (questions from the command line) and `safe-serve` (HTTP), over SafePipeline."""
