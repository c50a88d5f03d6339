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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local S3 server (moto's standalone one, a subprocess) with a bucket ``studies``; yields the
    AWS variables that point a client at it (set them in a test, or pass them to a subprocess)."""
    from servers import start_moto

    pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")
    pytest.importorskip("s3fs", reason="needs s3fs (pip install -e '.[dev]')")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        server, url = start_moto(out=out)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_keys(env)).create_bucket(
            Bucket="studies"
        )
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def _keys(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@pytest.fixture
def s3(
    s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    """A fresh ``s3://studies/<test>`` prefix on ``s3_server``, with the AWS variables set."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return f"s3://studies/{request.node.name.replace('[', '-').rstrip(']')}"
