#!/usr/bin/python3
"""field-ai inference service: answers iris classification requests from a
decision tree stored as JSON model data, mounted read-only at /models/iris.

  GET  /healthz                          -> {"status": "ok", ...}
  GET  /predict?x=5.1,3.5,1.4,0.2        -> {"class": "setosa", ...}
  POST /predict  {"features": [5.1, 3.5, 1.4, 0.2]}

Standard library only; no network access is needed or possible.
"""
import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MODEL_PATH = os.environ.get("MODEL_PATH", "/models/iris/iris-tree.json")
PORT = int(os.environ.get("PORT", "8080"))

with open(MODEL_PATH, "rb") as f:
    RAW = f.read()
MODEL = json.loads(RAW)
MODEL_SHA256 = hashlib.sha256(RAW).hexdigest()
NODES = MODEL["nodes"]
N_FEATURES = len(MODEL["features"])


def predict(x):
    i = 0
    while NODES[i]["left"] != -1:
        n = NODES[i]
        i = n["left"] if x[n["feature"]] <= n["threshold"] else n["right"]
    return MODEL["classes"][NODES[i]["class"]]


class Handler(BaseHTTPRequestHandler):
    server_version = "field-ai/1"

    def reply(self, code, body):
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def features(self, values):
        try:
            x = [float(v) for v in values]
        except (TypeError, ValueError):
            return None
        return x if len(x) == N_FEATURES else None

    def answer(self, x):
        if x is None:
            self.reply(400, {"error": "want %d numbers: %s" % (N_FEATURES, ", ".join(MODEL["features"]))})
        else:
            self.reply(200, {"class": predict(x), "features": x, "model_sha256": MODEL_SHA256})

    def do_GET(self):
        u = urlparse(self.path)
        if u.path == "/healthz":
            self.reply(200, {"status": "ok", "model_sha256": MODEL_SHA256})
        elif u.path == "/predict":
            q = parse_qs(u.query).get("x", [""])[0]
            self.answer(self.features(q.split(",")))
        else:
            self.reply(404, {"error": "try /predict?x=5.1,3.5,1.4,0.2"})

    def do_POST(self):
        if urlparse(self.path).path != "/predict":
            self.reply(404, {"error": "POST /predict"})
            return
        n = min(int(self.headers.get("Content-Length", "0") or 0), 65536)
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
            x = self.features(body.get("features"))
        except (ValueError, AttributeError):
            x = None
        self.answer(x)

    def log_message(self, fmt, *args):
        sys.stderr.write("field-ai: " + (fmt % args) + "\n")


if __name__ == "__main__":
    print("field-ai: serving model sha256:%s on :%d" % (MODEL_SHA256, PORT), flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
