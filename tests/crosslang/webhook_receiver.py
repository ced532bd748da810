#!/usr/bin/env python3
"""A webhook receiver for Allowly's black-box tests.

It verifies every request with the reference `standardwebhooks` package (the same call any
receiver would make: ``Webhook(secret).verify(body, headers)``) and appends one JSON line per
request to ``--log``: ``{"n", "verified", "verified_by", "error", "webhook_id", "timestamp",
"response", "payload"}``. ``response`` is the status it answered, or ``"hang"`` for a request it
held past the sender's timeout.

``--secret`` may be given more than once (a secret rotation): ``verified_by`` lists, per secret
in the order given, whether the request verifies with it alone, and ``verified`` is true if any
does.

Behaviour, by request number (0-based): with ``--gone`` every request gets 410; otherwise the
first ``--fail`` requests get 500, the next ``--hang`` are held for ``--hang-secs`` seconds
(then answered 200, long after the sender gave up), and the rest get 204. A request that does
not verify gets 401 (and ``verified: false`` in the log).

The first line on stdout is ``listening on http://127.0.0.1:PORT`` (``--port 0`` picks one).
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secret", required=True, action="append", help="the endpoint's whsec_ secret (repeatable)")
    ap.add_argument("--log", required=True, help="JSON-lines file to append to")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fail", type=int, default=0, help="answer 500 to this many requests first")
    ap.add_argument("--hang", type=int, default=0, help="then hold this many requests")
    ap.add_argument("--hang-secs", type=float, default=5.0)
    ap.add_argument("--gone", action="store_true", help="answer 410 to everything")
    args = ap.parse_args()

    hooks = [Webhook(s) for s in args.secret]
    lock = threading.Lock()
    state = {"n": 0}

    def log(record: dict) -> None:
        with lock, open(args.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            with lock:
                n = state["n"]
                state["n"] += 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k: v for k, v in self.headers.items()}
            record = {
                "n": n,
                "verified": False,
                "verified_by": [],
                "error": None,
                "webhook_id": headers.get("webhook-id"),
                "timestamp": headers.get("webhook-timestamp"),
                "response": None,
                "payload": None,
            }
            for wh in hooks:
                try:
                    record["payload"] = wh.verify(body, headers)
                    record["verified_by"].append(True)
                except Exception as e:  # any failure to verify is a test failure, recorded as such
                    record["verified_by"].append(False)
                    record["error"] = record["error"] or f"{type(e).__name__}: {e}"
            record["verified"] = any(record["verified_by"])
            if record["verified"]:
                record["error"] = None
            if not record["verified"]:
                status = 401
            elif args.gone:
                status = 410
            elif n < args.fail:
                status = 500
            elif n < args.fail + args.hang:
                record["response"] = "hang"
                log(record)
                time.sleep(args.hang_secs)
                self.answer(200)
                return
            else:
                status = 204
            record["response"] = status
            log(record)
            self.answer(status)

        def answer(self, status: int) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up (timeout) and closed the connection

        def log_message(self, format: str, *a) -> None:  # noqa: A002 (http.server's signature)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
