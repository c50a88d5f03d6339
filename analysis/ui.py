"""``distill-study ui``: MLflow's server over the study store, with links that open each study's runs.

MLflow 3.17 opens an experiment on its GenAI overview, where a training study looks empty; study
experiments carry ``mlflow.experimentKind=custom_model_development`` and the printed links add
``workflowType=machine_learning`` so they land on the runs table.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from distill_core import UserError

PORT_TRIES = 50
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (a listener holds it; TIME_WAIT leftovers do not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str, port: int, *, move: bool = True) -> int:
    """``port`` if free, else (when ``move``) the next free one above it.

    Raises:
        UserError: ``port`` is busy and may not move, or no port near it is free.
    """
    if not move and not port_is_free(host, port):
        raise UserError(
            f"port {port} on {host} is busy (another server listens there); pass a free --port, "
            "or drop --port to take the next free one"
        )
    for candidate in range(port, min(port + PORT_TRIES, 65536)):
        if port_is_free(host, candidate):
            return candidate
    raise UserError(
        f"ports {port}..{port + PORT_TRIES - 1} on {host} are all busy; pass a free one with --port"
    )


def exposure_warning(host: str) -> str | None:
    """The warning for serving beyond this machine: MLflow's UI has no authentication."""
    if host in LOOPBACK:
        return None
    return (
        f"warning: --host {host} serves the MLflow UI to other machines, and it has no authentication: "
        "anyone who can reach this port can read and delete your runs; use --host 127.0.0.1 unless you trust "
        "the network"
    )


def study_url(base: str, experiment_id: str) -> str:
    """The link that opens a study's runs table (not the GenAI overview)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def server_command(tracking_uri: str, artifact_root: str | None, host: str, port: int) -> list[str]:
    """``mlflow server`` over the store; one worker is plenty for one researcher."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        # One access-log line per browser request would bury the links printed above.
        "--uvicorn-opts",
        "--no-access-log",
    ]
    if artifact_root:  # experiments created from the UI keep their artifacts beside the store
        cmd += ["--default-artifact-root", artifact_root]
    return cmd


def serve(
    tracking_uri: str,
    artifact_root: str | None,
    studies: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    move_port: bool = True,
    say: Callable[[str], None] = print,
) -> int:
    """Start the MLflow server, print the URL and one link per study, block until Ctrl-C.

    A busy ``port`` moves to the next free one when ``move_port`` (the default port), else fails.

    Returns:
        The server's exit code (0 after Ctrl-C).

    Raises:
        UserError: no free port, or the server exits before it answers.
    """
    chosen = free_port(host, port, move=move_port)
    if chosen != port:
        say(f"port {port} is busy; using {chosen} instead (pass --port to choose another)")
    warning = exposure_warning(host)
    if warning:
        say(warning)
    base = f"http://127.0.0.1:{chosen}"
    # Its own session, so that stopping it also stops the uvicorn workers MLflow starts.
    proc = subprocess.Popen(
        server_command(tracking_uri, artifact_root, host, chosen), start_new_session=True
    )
    try:
        _wait_until_up(proc, f"{base}/health")
        say(f"MLflow UI for {tracking_uri}: {base}")
        for name, experiment_id in sorted(studies.items()):
            say(f"  study {name}: {study_url(base, experiment_id)}")
        if not studies:
            say("  no studies in this store yet (start one with distill-study run SPACE)")
        say("Ctrl-C stops it.")
        return proc.wait()
    except KeyboardInterrupt:
        say("stopping the MLflow UI")
        return 0
    finally:
        _stop(proc)


def _wait_until_up(proc: subprocess.Popen[bytes], health: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                f"mlflow server exited with code {proc.returncode} before answering; "
                "see its messages above, fix the store or port and retry"
            )
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise UserError(
        f"mlflow server did not answer at {health} within {START_TIMEOUT_S:.0f} s; "
        "see its messages above and retry"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (workers too), SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue
