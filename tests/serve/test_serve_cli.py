"""`keras-unet serve`'s refusals before it loads anything: an address beyond this machine without a token, a taken
port, bad limits, and the serve extra missing (one line, while `keras-unet --help` still works); and the exit
code a stop by Ctrl+C or SIGTERM leaves."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import REPO
from keras_unet.cli.main import main
from keras_unet.serve.server import check_bind, is_loopback
from serve_fixtures import MODEL


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.20", False), ("example.org", False)])
def test_which_addresses_count_as_this_machine(host, loopback):
    assert is_loopback(host) is loopback
    check_bind(host, "a-token")  # any address with a token


def test_another_address_without_a_token_is_refused_before_the_model_loads(capsys, monkeypatch):
    monkeypatch.delenv("KERAS_UNET_SERVE_TOKEN", raising=False)
    assert main(["serve", "--model", "no/such/model.keras", "--host", "0.0.0.0"]) == 2
    assert one_error_line(capsys) == (
        "error: --host 0.0.0.0 makes the server reachable from other machines; set --token (or "
        "KERAS_UNET_SERVE_TOKEN) so that every request must carry it, or keep the default --host 127.0.0.1")


def test_a_taken_port_and_bad_limits_are_one_line(capsys):
    pytest.importorskip("fastapi")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(MODEL), "--port", str(port)]) == 2
        assert one_error_line(capsys) == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"
    assert main(["serve", "--model", str(MODEL), "--queue", "-1"]) == 2
    assert one_error_line(capsys) == "error: --queue must be 0 or more, got -1"
    assert main(["serve", "--model", str(MODEL), "--threshold", "1.5"]) == 2
    assert one_error_line(capsys) == "error: --threshold must be between 0 and 1, got 1.5"


@pytest.mark.slow
def test_without_the_serve_extra_help_works_and_serve_says_what_to_install(tmp_path):
    """A fastapi package that fails on import stands in for a machine without the extra."""
    fake = tmp_path / "fake" / "fastapi"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'fastapi'\")\n")
    code = ("import sys\nfrom keras_unet.cli.main import main\n"
            "assert main(['--help']) == 0\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit as stop:\n    assert stop.code == 0\n"
            "sys.exit(main(['serve', '--model', sys.argv[1]]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(MODEL)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{tmp_path / 'fake'}:{REPO}", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "serve     serve a model" in out.stdout and "--concurrency" in out.stdout
    assert out.stderr.strip() == ("error: the model server needs FastAPI and uvicorn (No module named 'fastapi'): "
                                  "pip install 'keras_unet[serve]'")


STOP_SCRIPT = r"""
import os, signal, socket, sys, threading, time
from keras_unet.serve.server import listen, run

if sys.argv[2] == "swallowed":  # uvicorn's re-raise of the caught signal lost on the way, as CI once saw
    signal.raise_signal = lambda sig: None
sock = listen("127.0.0.1", 0)

async def app(scope, receive, send):
    pass

def stop_when_listening():
    for _ in range(400):
        try:
            socket.create_connection(sock.getsockname()[:2], timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.2)
    os.kill(os.getpid(), int(sys.argv[1]))

threading.Thread(target=stop_when_listening, daemon=True).start()
try:
    run(app, sock, connections=4)
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0)
"""


@pytest.mark.parametrize("reraise", ["kept", "swallowed"])
@pytest.mark.parametrize("sig, code", [(2, 130), (15, 143)])
def test_the_server_ends_as_the_signal_that_stopped_it_says(sig, code, reraise):
    pytest.importorskip("uvicorn")
    done = subprocess.run([sys.executable, "-c", STOP_SCRIPT, str(sig), reraise], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
