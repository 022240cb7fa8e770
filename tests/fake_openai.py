"""An OpenAI-compatible server on 127.0.0.1 (chat and text completions) that misbehaves on purpose, for
teacher and server-evaluation tests."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "429", "500", "slow", "malformed", "drop")  # also "no_choices", "null_content": no text


class FakeOpenAI:
    """fault(prompt, attempt) -> one of FAULTS decides each response; `answer(prompt)` the text of a chat
    answer, `complete(prompt, max_tokens)` that of a text completion (cut at the request's stop strings)."""

    def __init__(
        self,
        fault=None,
        latency: float = 0.0,
        slow_seconds: float = 3.0,
        answer=None,
        complete=None,
        status_on_all: int | None = None,
    ):
        self.fault = fault or (lambda prompt, attempt: "ok")
        self.latency, self.slow_seconds = latency, slow_seconds
        self.answer = answer or (
            lambda prompt: "First we add the numbers.\nThen we check.\nTherefore, the answer is 42."
        )
        self.complete = complete or (lambda prompt, max_tokens: self.answer(prompt))
        self.status_on_all = status_on_all
        self.attempts: Counter = Counter()
        self.successes: Counter = Counter()
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                chat = "messages" in body
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                key = (prompt, body.get("seed"))
                with outer.lock:
                    outer.attempts[key] += 1
                    attempt = outer.attempts[key]
                    outer.auth_headers.append(self.headers.get("authorization", ""))
                if outer.status_on_all:
                    return self._send(
                        outer.status_on_all,
                        {"error": {"message": "refused by the fake", "type": "invalid_request_error"}},
                    )
                fault = outer.fault(prompt, attempt)
                time.sleep(outer.latency)
                if fault == "429":
                    return self._send(
                        429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0.05"}
                    )
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                if fault == "slow":
                    time.sleep(outer.slow_seconds)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "malformed":
                    raw = b'{"id": "x", "choices": [ {"message": '
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                if fault == "no_choices" or fault == "null_content":  # answered (and billed) without text
                    text = ""
                    choice = {
                        "index": 0,
                        "finish_reason": "content_filter",
                        "message": {"role": "assistant", "content": None},
                    }
                elif chat:
                    text = outer.answer(prompt)
                    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                else:
                    text = outer.complete(prompt, body.get("max_tokens") or 16)
                    for stop in body.get("stop") or []:
                        text = text.split(stop)[0]
                    choice = {"index": 0, "finish_reason": "stop", "text": text, "logprobs": None}
                payload = {
                    "id": "fake",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [] if fault == "no_choices" else [choice],
                    "usage": {
                        "prompt_tokens": len(prompt) // 4,
                        "completion_tokens": len(text) // 4,
                        "total_tokens": (len(prompt) + len(text)) // 4,
                    },
                }
                if fault != "slow":
                    with outer.lock:
                        outer.successes[key] += 1
                self._send(200, payload)

            def _send(self, status, payload, headers=None):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
