"""Run the model server with uvicorn on one listening socket: loopback by default, any other address only with a
token; the socket is bound before the model loads, so a taken port is one error line, not a traceback."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading

from keras_unet.errors import ConfigError, KerasUnetError, first_line

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000  # X-AnyLabeling's default server is http://localhost:8000


def is_loopback(host: str) -> bool:
    """Whether a --host value reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_bind(host: str, token: str | None) -> None:
    """ConfigError for an address beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} makes the server reachable from other machines; set --token (or "
                          "KERAS_UNET_SERVE_TOKEN) so that every request must carry it, or keep the default "
                          f"--host {DEFAULT_HOST}")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), or ConfigError in one line."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    name = "localhost" if host.strip().lower() == "localhost" else host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in name else socket.AF_INET
        if name == "localhost":
            name, family = "127.0.0.1", socket.AF_INET
        return socket.create_server((name, port), family=family, backlog=128)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else first_line(exc)
        raise ConfigError(f"cannot listen on {host}:{port} ({reason})") from None


def url_of(sock: socket.socket) -> str:
    """http://HOST:PORT of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(app, sock: socket.socket, connections: int) -> None:
    """Serve app on the socket until interrupted (Ctrl+C or SIGTERM); connections: uvicorn's 503 backstop.

    Ends as the signal says, whichever way uvicorn and asyncio hand it back: KeyboardInterrupt for SIGINT (exit code
    130 from the command), SystemExit(143) for SIGTERM."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by = 0

        def handle_exit(self, sig, frame):
            self.stopped_by = self.stopped_by or sig
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=False, limit_concurrency=connections,
                            timeout_keep_alive=5, lifespan="off")
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again: with the default handler that ends
    # the process at once, so the caller's clean-up and its "server stopped" would never run
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main else None
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    # uvicorn raises the signal it caught once more after its shutdown, and asyncio's runner turns a SIGINT into a
    # task cancel first; the exit code does not rest on that chain (a CI run once saw code 0 after Ctrl+C)
    if server.stopped_by == signal.SIGINT:
        raise KeyboardInterrupt
    if server.stopped_by:
        _terminated(server.stopped_by, None)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # 143: the exit status of a process ended by SIGTERM


READY = re.compile(r"^serving .* at (http://\S+) ")


class ServerProcess:
    """`keras-unet serve ARGV...` in a child process, started and waited for: its URL once it listens with the model
    loaded, everything it printed (`output`), and stop() (Ctrl+C) for its exit code."""

    def __init__(self, argv, timeout: float = 120.0, env=None):
        command = [sys.executable, "-u", "-m", "keras_unet.cli.main", "serve", *map(str, argv)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, **(env or {})})
        self.output: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or not self.url:
            self.process.kill()
            self.process.wait()
            raise KerasUnetError(f"keras-unet serve did not start: {self.output[-1] if self.output else 'no output'}")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))
            found = READY.match(line)
            if found and not self.url:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()  # it exited

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGINT) -> int:
        """Interrupt the server (SIGINT, as Ctrl+C; or sig) and wait for it; its exit code (killed after timeout)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
