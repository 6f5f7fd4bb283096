"""``increc demo`` waits for the trainer before its final probe (``increc_ray.cli.caught_up``), Ray-free."""

from increc_ray.cli import caught_up


def _status(**over) -> dict:
    s = {"model_version": 3, "served_version": 3,
         "lag": {"pending_files": 0, "clean_parts_behind": 0},
         "trainer": {"progress": {"full_pass": None, "unread_events": 0}}}
    for key, value in over.items():
        if key in ("pending_files", "clean_parts_behind"):
            s["lag"][key] = value
        elif key in ("full_pass", "unread_events"):
            s["trainer"]["progress"][key] = value
        else:
            s[key] = value
    return s


def test_caught_up_only_when_every_event_is_learned_and_the_newest_version_served():
    assert caught_up(_status()) is None
    assert "full pass (cold start)" in caught_up(_status(full_pass={"reason": "cold start"}, clean_parts_behind=4))
    assert "2 files to clean" in caught_up(_status(pending_files=2))
    assert "5 clean parts" in caught_up(_status(clean_parts_behind=5))
    assert "40 events unread" in caught_up(_status(unread_events=40))
    assert "no version" in caught_up(_status(model_version=0, served_version=0))
    assert "serving version 2 of 3" in caught_up(_status(served_version=2))
    assert caught_up({**_status(), "trainer": {}}) is None  # a trainer not reporting progress yet: lag decides
