import pytest

from increc_ray.errors import BadRequest, PayloadTooLarge
from increc_ray.ingest.body import parse_body


def test_accepts_array_object_and_ndjson():
    assert parse_body(b'[{"a": 1}, {"a": 2}]', 10) == [{"a": 1}, {"a": 2}]
    assert parse_body(b'{"a": 1}', 10) == [{"a": 1}]
    assert parse_body(b'{"a": 1}\n\n{"a": 2}\n', 10) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("body,needle", [
    (b"", "empty"), (b"   ", "empty"), (b"[]", "no events"), (b"{nope", "not valid JSON"),
    (b'{"a": 1}\n{bad', "line 2"), (b"\xff", "UTF-8"),
])
def test_malformed_bodies_are_bad_requests(body, needle):
    with pytest.raises(BadRequest, match=needle) as err:
        parse_body(body, 10)
    assert err.value.status_code == 400 and needle in err.value.to_json()["error"]


def test_limits_are_413():
    with pytest.raises(PayloadTooLarge):
        parse_body(b"[" + b",".join([b"{}"] * 11) + b"]", 10)
    with pytest.raises(PayloadTooLarge) as err:
        parse_body(b"[{}]", 10, max_bytes=2)
    assert err.value.status_code == 413


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"a": ' * 100_000, b'{"a": 1}\n' + b"[" * 200_000])
def test_deeply_nested_body_is_a_bad_request_not_a_crash(body):
    with pytest.raises(BadRequest, match="nested too deeply") as err:  # json.loads raises RecursionError
        parse_body(body, 10)
    assert err.value.status_code == 400
