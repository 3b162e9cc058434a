"""``transformers serve`` on loopback, for the tests and benchmarks that need a real
OpenAI-compatible server (``pip install 'ex2[serve]'``: fastapi and uvicorn)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_server(model_dir: str, log: str | Path, timeout: float = 180.0) -> Iterator[str]:
    """``transformers serve MODEL_DIR`` on a free 127.0.0.1 port, offline; yields its base URL, stops it after.

    Its access log (``log``) has one ``"POST /v1/chat/completions HTTP/1.1" 200`` line per answered request.
    """
    import importlib.util
    import subprocess
    import sys
    import time
    import urllib.request

    if not (importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn")):
        raise ImportError("transformers serve needs fastapi and uvicorn: pip install 'ex2[serve]'")
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen([str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                                   "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not start; its log: {log}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def chat_completion(model: str, content: str, number: int = 1) -> dict:
    """An OpenAI chat-completion body answering ``content``."""
    return {"id": f"c{number}", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@contextlib.contextmanager
def scripted_chat_server(answer: Callable[[dict], tuple[int, dict] | None]) -> Iterator[str]:
    """A loopback OpenAI-compatible server: each POSTed request body goes to ``answer``, which returns
    ``(status, reply body)``, or None to send nothing. Yields the server's ``/v1`` base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            reply = answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            if reply is None:
                return
            status, data = reply
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
