"""Validation: expectation suites from the spec, run with Great Expectations."""

from mlsd.validation.report import render_html
from mlsd.validation.run import raise_if_failed, validate_frames
from mlsd.validation.suite import Check, table_suite, training_set_suite

__all__ = ["Check", "raise_if_failed", "render_html", "table_suite", "training_set_suite", "validate_frames"]
