"""Shared fixtures. Ray starts once per test session (~25 s on 2 cores), only for tests that ask.

Every new local MLflow store of the session is a copy of one empty store that MLflow created once
(``mlflow_template``): creating a SQLite store runs MLflow's schema migrations, seconds each time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``default_tracking_uri`` copies an empty store, made once by MLflow on first use, into
    every store folder that has none yet (in this process, for the session)."""
    from tracking import client

    made = client.default_tracking_uri
    template: list[Path] = []

    def from_template(store: str | Path = client.DEFAULT_STORE) -> str:
        db = Path(store).expanduser().resolve() / "mlflow.db"
        if not template:
            folder = tmp_path_factory.mktemp("mlflow-template")
            client.open_client(made(folder))
            template.append(folder / "mlflow.db")
        if not db.exists():
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template[0], db)
            except OSError:  # not a writable folder: the real function says so
                pass
        return made(store)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client, "default_tracking_uri", from_template)
        yield


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """A local Ray for the whole session; the runner reuses it. Yields its address for subprocesses."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
