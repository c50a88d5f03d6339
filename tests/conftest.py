"""Shared fixtures. Ray starts once per test session (~25 s on 2 cores), only for tests that ask."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """A local Ray for the whole session; the runner reuses it. Yields its address for subprocesses."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
