"""``distill-study ui``: a real MLflow server over a small study store, driven as a user would.

Started as a subprocess with its default port taken, polled with bounded waits, checked through
HTTP (the UI page and MLflow's REST API), then stopped with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from analysis.ui import port_is_free
from distill_core import fit, make_config
from tracking.client import RunLogger, get_or_create_experiment, open_client

STUDY = "uistudy"
START_TIMEOUT_S = 120


def small_study(root: Path) -> tuple[str, list[str]]:
    """A study of two one-epoch trials in the docs/tracking.md layout; returns experiment and run ids."""
    client = open_client(str(root))
    exp = get_or_create_experiment(client, STUDY, tags={"distill.space": "scratch_lr"})
    parent = client.create_run(
        exp, run_name=STUDY, tags={"distill.role": "study", "distill.objective": "val_acc"}
    )
    run_ids = [parent.info.run_id]
    for number, lr in enumerate((0.05, 0.2)):
        cfg = make_config(
            {
                "data": {"name": "synthetic"},
                "model": {"name": "mlp"},
                "optim": {"lr": lr},
                "run": {"epochs": 1, "device": "cpu"},
            }
        )
        logger = RunLogger.start(
            client,
            exp,
            cfg,
            run_name=f"{number:05d}-s0",
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "distill.role": "trial",
                "distill.trial_id": f"{number:05d}",
                "distill.group": f"g{number}",
            },
        )
        result = fit(cfg, on_epoch=lambda r, logger=logger: logger.log_epoch(r.epoch, r.metrics))
        logger.finish(result.status, result.final, step=len(result.history))
        run_ids.append(logger.run_id)
    return exp, run_ids


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models on 2 shared cores: torch's thread pool costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port_number() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.load(response)


def lines_of(stream) -> queue.Queue[str]:
    """Read a pipe on a thread so that waits on it can time out."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def wait_for_line(
    lines: queue.Queue[str], needle: str, proc: subprocess.Popen, seen: list[str]
) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, f"ui exited early: {seen}"
            continue
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} within {START_TIMEOUT_S} s: {seen}")


@pytest.mark.slow  # a real MLflow UI server: ~12 s
def test_ui_serves_the_study_and_stops_on_ctrl_c(one_thread: None, tmp_path: Path) -> None:
    exp, run_ids = small_study(tmp_path / "runs")
    port = 5000  # the default: when busy it moves to the next free port (a busy --port fails)
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", port))
        busy.listen()
    except OSError:
        pass  # something else holds it already: just as good
    proc = subprocess.Popen(
        [sys.executable, "-m", "studies", "ui", "--store", str(tmp_path / "runs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: list[str] = []
    try:
        lines = lines_of(proc.stdout)
        moved = wait_for_line(lines, "is busy", proc, seen)
        served = int(moved.split("using ")[1].split()[0])
        assert served > port
        link = wait_for_line(lines, f"study {STUDY}:", proc, seen).split(": ", 1)[1].strip()
        base = f"http://127.0.0.1:{served}"
        assert link == f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning"
        assert any(line.strip().endswith(base) for line in seen), seen

        with urllib.request.urlopen(link, timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        experiments = post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})[
            "experiments"
        ]
        [study] = [e for e in experiments if e["name"] == STUDY]
        assert study["experiment_id"] == exp
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in study[
            "tags"
        ]
        runs = post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp]})["runs"]
        assert sorted(r["info"]["run_id"] for r in runs) == sorted(run_ids)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        # Nothing is left listening: the uvicorn workers stopped too.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", served), timeout=5).close()
        assert port_is_free("127.0.0.1", served)
    finally:
        busy.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_busy_port_moves_only_when_not_chosen() -> None:
    """The default port moves to the next free one; a --port the user chose is an error."""
    from analysis.ui import free_port
    from distill_core import UserError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port_number()))
        busy.listen()
        port = busy.getsockname()[1]
        assert free_port("127.0.0.1", port) > port
        with pytest.raises(
            UserError, match=f"port {port} on 127.0.0.1 is busy.*pass a free --port"
        ):
            free_port("127.0.0.1", port, move=False)
    assert free_port("127.0.0.1", port, move=False) == port
