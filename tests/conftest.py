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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local S3 server (moto's standalone one, a subprocess) with a bucket ``studies``; yields the
    AWS variables that point a client at it (set them in a test, or pass them to a subprocess)."""
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")
    pytest.importorskip("s3fs", reason="needs s3fs (pip install -e '.[dev]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.2)
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
