"""CPU cost of the HTTP layer of one /recommend call, in process, without Ray or a network.

The Recommender of the tree on PYTHONPATH answers ASGI calls with stand-in handles (an
empty history, popular items from a list), so what is timed is routing, query parsing,
validation and JSON encoding: the part the FastAPI ingress changed. It works for the
hand-routed ``__call__`` (before) and the FastAPI app (after); run it once per tree:

    PYTHONPATH=/work/wt-before python bench/serve_http_overhead.py
    PYTHONPATH=. python bench/serve_http_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time


class _Method:
    def __init__(self, answer) -> None:
        self.answer = answer

    def remote(self, *args):
        future = asyncio.get_running_loop().create_future()
        future.set_result(self.answer(*args))
        return future


class _History:
    context = _Method(lambda user_id: ([], []))
    popular = _Method(lambda k, exclude: [(f"i{n}", 1.0 / (n + 1)) for n in range(k)])


def asgi_app(cls, cfg):
    """The replica's ASGI entry point, built without Serve and without its weight thread."""
    from starlette.requests import Request

    replica = object.__new__(cls)
    replica.cfg, replica.history, replica._scorer, replica.swaps = cfg, _History(), None, 0
    replica._stop = threading.Event()
    if hasattr(cls, "__serve_build_asgi_app__"):
        return replica.__serve_build_asgi_app__(), "fastapi"

    async def app(scope, receive, send):  # what Serve does for a plain deployment
        response = await replica(Request(scope, receive))
        await response(scope, receive, send)
    return app, "hand-routed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from increc_ray.config import Config
    from increc_ray.serve.recommender import Recommender

    app, kind = asgi_app(Recommender.func_or_class, Config.from_dict({}))
    scope = {"type": "http", "method": "GET", "path": "/recommend", "raw_path": b"/recommend",
             "query_string": b"user_id=u1&k=10", "headers": [(b"host", b"t")], "root_path": "", "scheme": "http",
             "server": ("t", 80), "client": ("c", 1), "http_version": "1.1", "asgi": {"version": "3.0"}}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def run() -> list[float]:
        sent = []

        async def send(message):
            sent.append(message)

        await app(dict(scope), receive, send)
        assert sent[0]["status"] == 200 and len(json.loads(sent[1]["body"])["items"]) == 10, sent
        best = []
        for _ in range(args.repeats):
            t0 = time.process_time()  # CPU time: this machine is shared
            for _ in range(args.requests):
                await app(dict(scope), receive, send)
            best.append((time.process_time() - t0) / args.requests * 1e6)
            sent.clear()
        return best

    per_request = asyncio.run(run())
    print(json.dumps({"http_layer": kind, "cpu_us_per_request_min": round(min(per_request), 1),
                      "cpu_us_per_request_all": [round(x, 1) for x in per_request]}))


if __name__ == "__main__":
    main()
