"""The research harness: experiments (one file each under ``experiments/``), a runner that
writes one results JSON per experiment, a report with tables and plots, and the spec's evidence
blocks regenerated from results. The product never imports this package."""

from byok.harness.registry import experiment

__all__ = ["experiment"]
