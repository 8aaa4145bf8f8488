"""Shared test settings: in CI, hypothesis replays the same examples every run (no flaky surprises)."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
