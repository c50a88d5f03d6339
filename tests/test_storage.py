"""Storage on S3 (docs/studies.md, "Running on a cluster"), against a real S3 HTTP server (moto's,
a subprocess: ``s3_server`` in conftest.py): the teacher store's guarantees, a study with its resume
and report kept under ``s3://``, and the one-line errors of a wrong bucket, refused credentials
and an unreachable endpoint, before anything starts."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from servers import free_port, start_moto

from distill_core import TeacherError, fit, load_data, make_config
from distill_core.config import Config
from distill_core.storage import S3_OPTIONS, lease, location, write_atomic
from distill_core.teachers import TeacherStore, teacher_spec
from studies.cli import main

ROOT = Path(__file__).resolve().parents[1]


def config(store: str) -> Config:
    """A 1-epoch KD run on digits from a 2-epoch mlp teacher kept in ``store``."""
    return make_config(
        {
            "data": {"name": "digits"},
            "model": {"name": "mlp"},
            "teacher": {"model": "mlp", "epochs": 2, "batch_size": 64},
            "method": {"name": "kd"},
            "run": {"epochs": 1, "batch_size": 64, "device": "cpu", "teacher_store": store},
        }
    )


def keys(url: str) -> list[str]:
    """Every object under ``url``, relative to it."""
    path = location(url)
    return sorted(p.removeprefix(path.path + "/") for p in path.fs.find(path.path))


def test_teacher_store_on_s3_trains_once_checks_sha256_and_shows_only_whole_files(s3: str) -> None:
    cfg = config(f"{s3}/teachers")
    said: list[str] = []
    # Two runs at once need the same teacher: the lease object lets one train it.
    runs = [threading.Thread(target=fit, args=(cfg,), kwargs={"log": said.append}) for _ in "ab"]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert sum(line.startswith("training ") for line in said) == 1, said

    store = TeacherStore(cfg.run.teacher_store)
    spec = teacher_spec(cfg)
    key = store.path(spec).name
    stored = keys(cfg.run.teacher_store)
    assert [k for k in stored if "/logits/" not in k] == [
        f"{key}/epoch_0001.pt",
        f"{key}/epoch_0002.pt",
        f"{key}/meta.json",
    ]  # no temporary key, no lease left behind
    meta = store.meta(spec)
    assert meta is not None
    for epoch in ("1", "2"):
        blob = (store.path(spec) / meta["epochs"][epoch]["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == meta["epochs"][epoch]["sha256"]

    # A corrupted object is caught by its SHA-256 on load, and retrained by the next run.
    (store.path(spec) / "epoch_0002.pt").write_bytes(b"not a checkpoint")
    data = load_data(cfg.data)
    with pytest.raises(TeacherError, match="corrupted"):
        store.load(spec, 2, data, torch.device("cpu"))
    said.clear()
    fit(cfg, log=said.append)
    assert any("corrupted (checksum mismatch)" in line for line in said), said
    assert store.load(spec, 2, data, torch.device("cpu")) is not None


def test_write_atomic_on_s3_leaves_the_old_object_when_the_commit_fails(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = location(s3) / "state.pt"
    write_atomic(path, b"first")

    def broken(self: Any, target: Any) -> None:
        raise ConnectionError("connection reset during the copy")

    monkeypatch.setattr(type(path), "rename", broken)
    with pytest.raises(ConnectionError):
        write_atomic(path, b"second, never committed")
    assert path.read_bytes() == b"first"
    assert keys(s3) == ["state.pt"]  # the temporary object is gone too


class _Flaky(BaseHTTPRequestHandler):
    """Forwards to the S3 server, but answers the first ``server.failures`` PUTs with 503 SlowDown
    (how S3 sheds load): a transient error in the middle of an upload."""

    server: Any
    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue"

    def forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "PUT" and self.server.failures > 0:
            self.server.failures -= 1
            self.reply(503, {}, b"<Error><Code>SlowDown</Code><Message>slow down</Message></Error>")
            return
        upstream = http.client.HTTPConnection(*self.server.target)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        self.reply(answer.status, dict(answer.getheaders()), answer.read())

    def reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in (
                "content-length",
                "transfer-encoding",
                "connection",
                "server",
                "date",
            ):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_s3(s3: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    """A proxy in front of the S3 server that fails PUTs on demand (``proxy.failures``)."""
    upstream = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    proxy.target = (upstream.hostname, upstream.port)  # type: ignore[attr-defined]
    proxy.failures = 0  # type: ignore[attr-defined]
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
    yield proxy
    proxy.shutdown()


def test_transient_s3_errors_during_an_upload_are_retried(
    s3: str, s3_server: dict[str, str], flaky_s3: ThreadingHTTPServer
) -> None:
    import boto3
    from upath import UPath

    path = UPath(s3, skip_instance_cache=True, **S3_OPTIONS) / "teachers" / "epoch_0001.pt"
    blob = os.urandom(1 << 20)
    flaky_s3.failures = 3  # type: ignore[attr-defined]
    write_atomic(path, blob)
    assert flaky_s3.failures == 0  # type: ignore[attr-defined]
    # read straight from the server: the object was committed whole, after the retries
    direct = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    bucket, prefix = path.path.split("/", 1)
    assert direct.get_object(Bucket=bucket, Key=prefix)["Body"].read() == blob
    listed = direct.list_objects_v2(Bucket=bucket, Prefix=prefix.rsplit("/", 2)[0] + "/")
    assert [o["Key"] for o in listed["Contents"]] == [prefix]  # no temporary object left


def test_a_stale_lease_on_s3_is_taken_over(s3: str) -> None:
    entry = location(s3) / "teacher"
    marker = location(s3) / "teacher.lease"
    marker.write_bytes(json.dumps({"holder": "dead:1", "time": time.time() - 3600}).encode())
    started = time.time()
    with lease(entry):
        assert json.loads(marker.read_bytes())["holder"] != "dead:1"
    assert time.time() - started < 10 and not marker.exists()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An S3 server that checks credentials (and knows none): every key is refused."""
    pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")
    server, url = start_moto({**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "bucket",
            "S3 bucket 'no-such-bucket' of --storage s3://no-such-bucket/lab does not exist",
        ),
        ("credentials", "refused the credentials for --storage s3://studies/lab"),
        ("endpoint", "cannot reach the S3 endpoint http://127.0.0.1:"),
    ],
)
def test_s3_errors_are_one_line_exit_2_before_anything_starts(
    s3: str,
    case: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    storage = "s3://no-such-bucket/lab" if case == "bucket" else "s3://studies/lab"
    if case == "credentials":
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("auth_server"))
    if case == "endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    mlruns = tmp_path / "mlruns"
    args = ["run", "alpha", "--smoke-test", "--storage", storage, "--tracking-uri", str(mlruns)]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2, out.output
    [line] = out.output.splitlines()
    assert line.startswith("error: ") and message in line, line
    assert "; " in line  # the fix follows the cause
    assert not mlruns.exists()  # failed before the MLflow store was created


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """``distill-study ARGS`` as a user runs it: its own process, its own local Ray."""
    done = subprocess.run(
        [sys.executable, "-m", "studies", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow  # two studies' own local Rays: ~90 s on 2 cores
def test_study_resume_and_report_kept_on_s3(
    s3: str, s3_server: dict[str, str], tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    mlruns = str(tmp_path / "mlruns")
    where = ["--storage", s3, "--tracking-uri", mlruns]
    said = cli(
        ["run", "alpha", "--smoke-test", "--trials", "2", "--name", "a", *where], cwd, s3_server
    )
    assert f"folder {s3}/a" in said and "training 1 teacher(s) once" in said, said
    stored = keys(s3)
    assert "a/distill_study.json" in stored and "a/tuner.pkl" in stored, stored
    assert any(k.startswith("a/experiment_state-") for k in stored), stored
    trials = {k.split("/")[1] for k in stored if k.endswith("/state.pt")}
    assert len(trials) == 2  # each trial's checkpoint, uploaded by the trial
    assert sum(k.endswith("/meta.json") and k.startswith("teachers/") for k in stored) == 1
    assert list(cwd.iterdir()) == []  # nothing of the study on this machine's disk

    client = MlflowClient(f"sqlite:///{mlruns}/mlflow.db")
    exp = client.get_experiment_by_name("a")
    before = {r.info.run_id for r in client.search_runs([exp.experiment_id])}
    resumed = cli(["run", "alpha", "--resume", "--name", "a", "--storage", s3], cwd, s3_server)
    assert f"resuming study a from {s3}/a" in resumed and "best trial" in resumed, resumed
    assert "training" not in resumed  # the teacher came from the store on S3
    after = client.search_runs([exp.experiment_id])
    assert {r.info.run_id for r in after} == before
    assert all(r.info.status == "FINISHED" for r in after)

    # The report finds the MLflow store through the study file on S3, and is kept there too.
    out = CliRunner().invoke(main, ["report", "a", "--storage", s3, "--out", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert f"kept in {s3}/a/report" in out.output
    assert (location(s3) / "a" / "report" / "report.md").read_text() == (
        tmp_path / "r" / "report.md"
    ).read_text()
    out = CliRunner().invoke(
        main, ["export", "a", "--storage", s3, "--top-k", "1", "--out", str(tmp_path / "e")]
    )
    assert out.exit_code == 0, out.output
    assert (location(s3) / "a" / "exports" / "a-1.yaml").read_text() == (
        tmp_path / "e" / "a-1.yaml"
    ).read_text()
    missing = CliRunner().invoke(main, ["report", "nope", "--storage", s3])
    assert missing.exit_code == 2 and "no study 'nope' in --storage" in missing.output
