#!/usr/bin/env python3
"""A third-party provider backend for Berth, written only from CONTRACTS.md section 2.

It manages key-value namespaces: each service is a directory under DATA_DIR holding its plan,
config and a `data.json` the application can fill. Python standard library only.

    BERTH_KV_API_KEY=... python3 backend.py --listen 127.0.0.1:7090 --data-dir /tmp/kv

serves the provider under the base path /kv (endpoint http://127.0.0.1:7090/kv).
"""

import argparse
import hmac
import json
import os
import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BASE = "/kv"
LOCK = threading.Lock()


class Store:
    """One directory per instance; `meta.json` holds what the platform asked for."""

    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path(self, iid):
        return os.path.join(self.root, iid)

    def ids(self):
        return sorted(d for d in os.listdir(self.root) if os.path.isfile(os.path.join(self.root, d, "meta.json")))

    def get(self, iid):
        try:
            with open(os.path.join(self.path(iid), "meta.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def put(self, iid, meta):
        os.makedirs(self.path(iid), exist_ok=True)
        tmp = os.path.join(self.path(iid), "meta.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(self.path(iid), "meta.json"))
        data = os.path.join(self.path(iid), "data.json")
        if not os.path.exists(data):
            with open(data, "w") as f:
                f.write("{}")

    def delete(self, iid):
        shutil.rmtree(self.path(iid), ignore_errors=True)

    def status(self, iid, meta):
        return {
            "plan": {"parameters": meta.get("plan", {})},
            "config": meta.get("config", {}),
            "details": {"namespace": iid, "path": os.path.join(self.path(iid), "data.json"),
                        "paused": meta.get("paused", False), "ready": not meta.get("paused", False)},
        }


def valid_uuid(text):
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, AttributeError, TypeError):
        return False


class Handler(BaseHTTPRequestHandler):
    store = None
    api_key = None

    def log_message(self, fmt, *args):  # quiet: the platform polls often
        pass

    def reply(self, code, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, code, message):
        self.reply(code, {"error": message})

    def authorized(self):
        if not self.api_key:
            return True
        given = self.headers.get("X-API-Key")
        auth = self.headers.get("Authorization", "")
        if given is None and auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            value = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def route(self):
        """Splits the path into the part after BASE; None when it is not ours."""
        parts = urlsplit(self.path)
        path = parts.path
        if path in ("/health", "/ready", BASE + "/health", BASE + "/ready"):
            return "open", None, parts.query
        if path == BASE or path == BASE + "/":
            return "root", None, parts.query
        if path.startswith(BASE + "/"):
            return "item", path[len(BASE) + 1:], parts.query
        return None, None, None

    def handle_any(self, method):
        kind, rest, query = self.route()
        if kind == "open" and method == "GET":
            return self.reply(200, {"status": "ok"})
        if kind is None:
            return self.error(404, "no such endpoint")
        if not self.authorized():
            return self.error(401, "missing or wrong API key")
        with LOCK:
            if kind == "root" and method == "GET":
                ids = parse_qs(query).get("id")
                if ids is None:
                    return self.reply(200, self.store.ids())
                out = {}
                for iid in ids:
                    meta = self.store.get(iid) if valid_uuid(iid) else None
                    if meta is not None:
                        out[iid] = self.store.status(iid, meta)
                return self.reply(200, out)
            if kind == "root" and method == "POST":
                body = self.body()
                if body is None or not valid_uuid(str(body.get("id"))):
                    return self.error(400, "the body needs an id (uuid)")
                team = body.get("teamId")
                if not isinstance(team, int) or isinstance(team, bool) or team < 1:
                    return self.error(400, "teamId must be a positive integer")
                meta = {"teamId": team, "plan": (body.get("plan") or {}).get("parameters", {}),
                        "config": body.get("config") or {}}
                existing = self.store.get(body["id"])
                if existing is not None and (existing["plan"], existing["config"]) != (meta["plan"], meta["config"]):
                    return self.error(409, "an instance with this id exists with another spec")
                self.store.put(body["id"], meta)
                return self.reply(201)
            if kind == "item" and rest.startswith("backups/"):
                return self.backups(method, rest[len("backups/"):])
            if kind == "item" and method == "PATCH":
                body = self.body()
                if body is None:
                    return self.error(400, "the body must be a JSON object")
                if "id" in body and body["id"] != rest:
                    return self.error(400, "the body id does not match the path id")
                meta = self.store.get(rest) if valid_uuid(rest) else None
                if meta is None:
                    return self.error(404, "no instance %s" % rest)
                if "plan" in body:
                    meta["plan"] = (body.get("plan") or {}).get("parameters", {})
                if "config" in body:
                    meta["config"] = body.get("config") or {}
                if "pause" in body:  # Berth's extension: a paused namespace refuses use, keeps data
                    meta["paused"] = bool(body["pause"])
                self.store.put(rest, meta)
                return self.reply(204)
            if kind == "item" and method == "DELETE":
                if valid_uuid(rest):
                    self.store.delete(rest)
                return self.reply(204)
        return self.error(405, "method not allowed")

    def backups(self, method, rest):
        """A backup is a copy of the namespace's data file, kept beside the namespaces."""
        bid, _, action = rest.partition("/")
        body = self.body()
        if not valid_uuid(bid) or body is None or not valid_uuid(str(body.get("msId"))):
            return self.error(400, "a backup id and a body with msId (uuid) are needed")
        src = os.path.join(self.store.path(body["msId"]), "data.json")
        dest = os.path.join(self.store.root, "_backups", bid + ".json")
        if method == "PUT" and action == "":
            where = (body.get("config") or {}).get("destinationPath", "local")
            if where != "local":  # this example keeps backups on its own disk only
                return self.error(400, "destinationPath %r is not supported; use 'local'" % where)
            if not os.path.exists(src):
                return self.error(404, "no instance %s" % body["msId"])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(src, dest + ".tmp")
            os.replace(dest + ".tmp", dest)
            return self.reply(202)
        if method == "POST" and action == "status":
            return self.reply(200, {"exists": os.path.exists(dest)})
        if method == "DELETE" and action == "":
            if os.path.exists(dest):
                os.remove(dest)
            return self.reply(202)
        return self.error(405, "method not allowed")

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_PUT(self):
        self.handle_any("PUT")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:7090")
    parser.add_argument("--data-dir", default="./kv-data")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Handler.store = Store(args.data_dir)
    Handler.api_key = os.environ.get("BERTH_KV_API_KEY")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print("kv backend on http://%s:%s%s" % (host, port, BASE), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
