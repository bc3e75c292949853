"""A fake OpenAI-compatible endpoint for the judge tests: well-behaved, or broken in one named way."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"

# Broken replies: mode → (HTTP status, content type, body) for every request.
BROKEN_BODIES = {
    "json_list": (200, "application/json", b'[{"choices": [{"message": {"content": "M"}}]}]'),
    "choices_object": (200, "application/json", b'{"choices": {"message": {"content": "M"}}}'),
    "choices_strings": (200, "application/json", b'{"choices": ["M"]}'),
    "message_null": (200, "application/json", b'{"choices": [{"message": null}]}'),
    "content_list": (200, "application/json", b'{"choices": [{"message": {"content": [{"type": "text", "text": "M"}]}}]}'),
    "null_logprob": (200, "application/json", json.dumps({"choices": [{"message": {"content": "M"}, "logprobs": {"content": [
        {"token": "M", "logprob": None, "top_logprobs": [{"token": "M", "logprob": None}, {"token": "m", "logprob": -2.0}]}]}}]}).encode()),
    "missing_logprob": (200, "application/json", json.dumps({"choices": [{"message": {"content": "M"}, "logprobs": {"content": [
        {"token": "M"}]}}]}).encode()),
    "logprobs_string": (200, "application/json", b'{"choices": [{"message": {"content": "M"}, "logprobs": "M"}]}'),
    "html": (200, "text/html", HTML),
    "html_502": (502, "text/html", HTML),
    "huge": (200, "application/json", b" " * ((1 << 20) + 1)),
    # llama-cpp-python 0.3.36's server started with --logits_all false, to any request asking for log-probs
    "logprobs_refused": (500, "application/json", b'{"error":{"message":"logprobs is not supported for models created '
                         b'with logits_all=False","type":"internal_server_error","param":null,"code":null}}'),
}

# A weak judge's first-token log-probs as llama-cpp-python's server returned them for SmolLM2-135M-Instruct
# (the winner's letter second, the loser's eighth: outside a top 5), cut to the `top_logprobs` asked for.
WEAK_TOP = [("The", -1.84), ("WIN", -2.83), ("This", -3.22), ("{", -3.42), ("Your", -3.53), ("I", -3.8), ("You", -4.04),
            ("LOSE", -4.08), ("###", -4.11), ("A", -4.36)]


class FakeEndpoint:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that prefers the output containing GOOD.

    `mode`: "logprobs" (soft verdicts), "weak" (a weak judge's log-probs, cut to `top_logprobs`),
    "text" (the letter only), "garbage" (a reply naming no
    one), a key of BROKEN_BODIES, "hang" (no reply until `close`), "trickle" (headers, then one
    byte every 50 ms for seconds) or "echo" (the Authorization header echoed, as some gateways
    do: in the text of a pairwise reply whose log-probs hold the verdict, and in the body of an
    HTTP 400 to a grading request).
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_first: list[int] = []  # HTTP statuses to answer before behaving
        self.delay_s = 0.0
        self.mode = "logprobs"
        self.in_flight = self.max_in_flight = 0
        self.released = threading.Event()
        lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                try:
                    if endpoint.fail_first:
                        self.reply(endpoint.fail_first.pop(0), "application/json", b"")
                        return
                    with lock:
                        endpoint.in_flight += 1
                        endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                    time.sleep(endpoint.delay_s)
                    with lock:
                        endpoint.in_flight -= 1
                    endpoint.respond(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def reply(self, status: int, content_type: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def respond(self, handler, body: dict) -> None:
        if self.mode in BROKEN_BODIES:
            handler.reply(*BROKEN_BODIES[self.mode])
        elif self.mode == "hang":
            self.released.wait(30)
        elif self.mode == "trickle":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "100")
            handler.end_headers()
            for _ in range(100):
                if self.released.wait(0.05):
                    return
                handler.wfile.write(b" ")
                handler.wfile.flush()
        elif self.mode == "echo" and "[[rating]]" in body["messages"][-1]["content"]:
            auth = handler.headers.get("Authorization")
            error = {"message": f"invalid request with Authorization: {auth}", "request_headers": dict(handler.headers)}
            handler.reply(400, "application/json", json.dumps({"error": error}).encode())
        elif self.mode == "echo":
            reply = self.answer(body)  # a verdict in the log-probs, the header in the text
            reply["choices"][0]["message"]["content"] += f" (Authorization: {handler.headers.get('Authorization')})"
            handler.reply(200, "application/json", json.dumps(reply).encode())
        else:
            handler.reply(200, "application/json", json.dumps(self.answer(body)).encode())

    def answer(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        if self.mode == "garbage":
            return {"choices": [{"message": {"role": "assistant", "content": "Both"}}]}
        if "[[rating]]" in prompt:
            text = "Concise and correct. Rating: [[7]]" if "GOOD" in prompt else "I cannot decide."
            return {"choices": [{"message": {"role": "assistant", "content": text}}]}
        first = re.search(r'"model_identifier": "m",\s*"output": """(.*?)"""', prompt, re.S).group(1)
        winner, loser = ("m", "M") if "GOOD" in first else ("M", "m")
        choice = {"message": {"role": "assistant", "content": winner}}
        if self.mode in ("logprobs", "echo"):
            top = [{"token": winner, "logprob": math.log(0.9)}, {"token": loser, "logprob": math.log(0.1)}]
            choice["logprobs"] = {"content": [{"token": winner, "logprob": math.log(0.9), "top_logprobs": top}]}
        if self.mode == "weak":  # llama-cpp-python's shape: text the top token, "bytes": null, "refusal": null
            names = {"WIN": winner, "LOSE": loser}
            top = [{"token": names.get(t, t), "logprob": lp, "bytes": None} for t, lp in WEAK_TOP[:body["top_logprobs"]]]
            choice["message"]["content"] = "The"
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}], "refusal": None}
        return {"choices": [choice]}

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
