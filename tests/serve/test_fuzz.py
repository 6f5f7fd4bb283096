"""Fuzz the HTTP API from its own OpenAPI document (schemathesis), in process: no input may
produce a 5xx. Behind the API is the real Ray-free ingest pipeline (cleaning, de-duplication,
the landing zone on a temporary folder), so fuzzed event bodies go through the same code as in
production; recommend answers come from a stand-in (the model is not what is fuzzed here).

schemathesis: it derives valid and invalid requests from the OpenAPI schema the app publishes,
so a route added later is fuzzed without a new test.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from conftest import record
from increc_ray.config import Config
from increc_ray.ingest.pipeline import EventPipeline
from increc_ray.ingest.ray_job import clean_files_locally
from increc_ray.serve.api import build_api

TOKEN = "fuzz-token"
_DATA = tempfile.mkdtemp(prefix="increc_fuzz_")
CFG = Config.from_dict({"data_dir": _DATA, "ingest": {"max_body_bytes": 20000, "max_events_per_request": 50}})


class PipelineService:
    """The API's service with the real pipeline behind ``/events``."""

    def __init__(self) -> None:
        self.pipeline = EventPipeline(CFG, clean_files=clean_files_locally)
        self.requests = 0

    async def _recommend(self, user_id: str, k: int) -> dict:
        self.requests += 1
        return {"user_id": user_id, "k": k, "source": "fallback", "model_version": 0, "degraded": False, "items": []}

    async def _ingest(self, records: list) -> dict:
        self.requests += 1
        report, _ = self.pipeline.ingest(records)
        return report.to_json()

    def _health(self) -> dict:
        return {"status": "ok", "model_version": 0, "history_reachable": True}

    async def _status(self) -> dict:
        return {"model_version": 0, "ingest": self.pipeline.status()}

    async def _rollback(self, version: int) -> dict:
        self.requests += 1
        return {"error": f"version {version} is not kept; these are: []", "available": []}


SERVICE = PipelineService()
TRIED = {"inputs": 0, "server_errors": 0}


@pytest.fixture(scope="module", autouse=True)
def _record_totals():
    yield
    shutil.rmtree(_DATA, ignore_errors=True)
    record("schemathesis fuzz of the OpenAPI routes (real ingest pipeline)", trials=1, **TRIED)


def _count(response) -> None:
    TRIED["inputs"] += 1
    TRIED["server_errors"] += response.status_code >= 500
schema = schemathesis.openapi.from_asgi("/openapi.json", build_api(SERVICE, CFG, token=TOKEN))
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@schema.parametrize()
@FUZZ
def test_no_input_gets_a_server_error(case):
    """With the token (so the fuzzer reaches the handlers) and every documented status."""
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    _count(response)
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance])


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_the_token_writes_nothing_and_gets_no_server_error(case):
    before = SERVICE.pipeline.counts["accepted"] + SERVICE.pipeline.counts["quarantined"]
    response = case.call()
    _count(response)
    case.validate_response(response, checks=[not_a_server_error])
    if case.path in ("/events", "/status") and case.method.upper() == case.operation.method.upper():
        assert response.status_code == 401, (case.path, response.status_code, response.text)
    assert SERVICE.pipeline.counts["accepted"] + SERVICE.pipeline.counts["quarantined"] == before
