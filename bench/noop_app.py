"""The do-nothing Serve deployment the serving benchmarks compare against: the ceiling of the
ingress on the machine (one JSON answer, no work). Deployed next to the increc_ray app, behind
the same ingress, in the same run: ``import_path: noop_app:app`` with ``bench/`` on PYTHONPATH."""

from ray import serve
from starlette.responses import JSONResponse


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
class Noop:
    async def __call__(self, request):
        return JSONResponse({"ok": True})


app = Noop.bind()
