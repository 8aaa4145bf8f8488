"""A module instance made when the file is imported, for `bench_meta_build.py`: `big_instance.py:net` holds the
same 10 billion parameters as `big_models.py:ten_billion`, built by `net = ...` at the file's top level."""

from __future__ import annotations

from big_models import ten_billion

net = ten_billion()
