"""Races with real transactions, on SQLite and PostgreSQL: overlapping writers, publish against an in-flight
writer, and a warm lookup cache while another process changes the tag."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from vbes.calibration import CalibrationStore, IoVEntry, Payload
from vbes.calibration.store import normalize_url, tag_seal

from vbes.errors import IoVOverlap, PayloadNotFound, TagStateError

FORK = multiprocessing.get_context("fork")
RAW_INSERT = sa.text("INSERT INTO iov (tag_id, payload_type, first_run, last_run, payload_sha256) "
                     "SELECT id, 'Mdc', :first, :last, :sha FROM global_tag WHERE name = 'T'")


@pytest.fixture
def store(db_url: str) -> Iterator[CalibrationStore]:
    s = CalibrationStore(db_url)
    s.create_tag("T", "6.6.4")
    yield s
    s.close()


@pytest.fixture
def raw_engine(db_url: str) -> Iterator[sa.Engine]:
    """A plain SQLAlchemy writer that knows nothing about vbes (default transaction handling)."""
    engine = sa.create_engine(normalize_url(db_url))
    yield engine
    engine.dispose()


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        t0 = time.perf_counter()
        try:
            outcome["result"] = work()
        except Exception as exc:  # noqa: BLE001 - the test inspects what happened
            outcome["error"] = exc
        outcome["waited"] = time.perf_counter() - t0

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _put_with_own_store(url: str, first: int, last: int, value: int) -> Payload:
    with CalibrationStore(url) as other:
        return other.put("T", "Mdc", first, last, {"v": value})


def test_overlapping_writer_waits_for_the_in_flight_one_and_is_refused(store: CalibrationStore,
                                                                       raw_engine: sa.Engine) -> None:
    payload = store.put_payload(Payload.build("Mdc", {"v": 1}))
    with raw_engine.connect() as raw:
        tx = raw.begin()
        raw.execute(RAW_INSERT, {"first": 100, "last": 200, "sha": payload.sha256})
        thread, outcome = _in_thread(lambda: _put_with_own_store(store.url, 150, 250, 2))
        time.sleep(0.6)
        assert thread.is_alive(), "the second writer must wait for the first one's transaction"
        tx.commit()
        thread.join(30)
    assert isinstance(outcome.get("error"), IoVOverlap), outcome
    assert outcome["waited"] >= 0.5
    assert [(i.first, i.last) for i in store.iovs("T")] == [(100, 200)]


def test_publish_is_refused_while_a_write_is_in_flight(store: CalibrationStore, raw_engine: sa.Engine) -> None:
    payload = store.put_payload(Payload.build("Mdc", {"v": 1}))
    with raw_engine.connect() as raw:
        tx = raw.begin()
        raw.execute(RAW_INSERT, {"first": 100, "last": 200, "sha": payload.sha256})
        with pytest.raises(TagStateError, match="another transaction is writing"):
            store.publish_tag("T")
        tx.commit()  # the write is accepted ...
    info = store.tag_info("T")
    assert info["state"] == "open" and info["iovs"] == 1  # ... and the publish was not
    store.publish_tag("T")  # once nobody writes, publishing works


@pytest.mark.parametrize("publish_commits", [True, False])
def test_write_during_an_in_flight_publish_waits_and_follows_its_outcome(
        store: CalibrationStore, raw_engine: sa.Engine, publish_commits: bool) -> None:
    # a raw-SQL publisher must record the seal of what it publishes, as publish_tag does
    seal = tag_seal({**store.tag_record("T"), "published_at": "now"}, store.iovs("T"))
    with raw_engine.connect() as raw:
        tx = raw.begin()
        raw.execute(sa.text("UPDATE global_tag SET state = 'published', published_at = 'now', seal = :seal "
                            "WHERE name = 'T'"), {"seal": seal})
        thread, outcome = _in_thread(lambda: _put_with_own_store(store.url, 300, 400, 3))
        time.sleep(0.6)
        assert thread.is_alive(), "the writer must wait for the publishing transaction"
        tx.commit() if publish_commits else tx.rollback()
        thread.join(30)
    info = store.tag_info("T")
    if publish_commits:
        assert isinstance(outcome.get("error"), TagStateError), outcome
        assert (info["state"], info["iovs"]) == ("published", 0)
    else:
        assert "error" not in outcome, outcome
        assert (info["state"], info["iovs"]) == ("open", 1)


def _racer(url: str, rounds: int, offset: int, barrier: Any, results: Any) -> None:
    with CalibrationStore(url) as s:
        for r in range(rounds):
            barrier.wait(timeout=60)
            try:
                s.put(f"R{r}", "EsTime", 1000 + offset, 2000 + offset, {"writer": offset})
                results.put((r, offset, "accepted"))
            except IoVOverlap:
                results.put((r, offset, "refused"))


def test_two_processes_racing_overlapping_iovs_exactly_one_wins(store: CalibrationStore) -> None:
    rounds = 4
    for r in range(rounds):
        store.create_tag(f"R{r}")
    barrier, results = FORK.Barrier(2), FORK.Queue()
    procs = [FORK.Process(target=_racer, args=(store.url, rounds, offset, barrier, results)) for offset in (0, 500)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * rounds)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for r in range(rounds):
        verdicts = sorted(v for rr, _, v in outcomes if rr == r)
        assert verdicts == ["accepted", "refused"], (r, outcomes)
        assert len(store.iovs(f"R{r}")) == 1


def _change_tag(url: str, action: str) -> None:
    with CalibrationStore(url) as s:
        if action == "fill-gap":
            s.put("T", "Mdc", 201, 300, {"v": 2})
        elif action == "replace":
            s.put_many("T", [IoVEntry("Mdc", 100, 200, Payload.build("Mdc", {"v": 3}))], replace=True, atomic=True)
        elif action == "publish+invalidate":
            s.publish_tag("T")
            s.invalidate_tag("T")
        elif action == "invalidate":
            s.invalidate_tag("T")


def _in_other_process(url: str, action: str) -> None:
    p = FORK.Process(target=_change_tag, args=(url, action))
    p.start()
    p.join(60)
    assert p.exitcode == 0


def test_warm_cache_never_serves_stale_answers_after_another_process_changes_the_tag(
        store: CalibrationStore) -> None:
    store.put("T", "Mdc", 100, 200, {"v": 1})
    for _ in range(3):  # warm
        assert store.get("T", "Mdc", 150).constants == {"v": 1}
        with pytest.raises(PayloadNotFound):
            store.get("T", "Mdc", 250)
    assert "T" in store._tags  # the answers above came from the cache

    _in_other_process(store.url, "fill-gap")
    assert store.get("T", "Mdc", 250).constants == {"v": 2}
    assert set(store.resolve("T", 250)) == {"Mdc"}

    _in_other_process(store.url, "replace")
    assert store.get("T", "Mdc", 150).constants == {"v": 3}
    with pytest.raises(PayloadNotFound):
        store.get("T", "Mdc", 250)

    _in_other_process(store.url, "publish+invalidate")
    with pytest.raises(TagStateError, match="invalid"):
        store.get("T", "Mdc", 150)


def test_invalidating_a_cached_published_tag_is_honoured(store: CalibrationStore) -> None:
    store.put("T", "Mdc", 100, 200, {"v": 1})
    store.publish_tag("T")
    for _ in range(3):
        assert store.get("T", "Mdc", 150).constants == {"v": 1}
    _in_other_process(store.url, "invalidate")
    # SQLite notices at once; PostgreSQL re-reads a published tag's state every 0.1 s (its IoVs cannot change)
    deadline = time.monotonic() + (0.0 if store.dialect == "sqlite" else 0.5)
    while True:
        try:
            store.get("T", "Mdc", 150)
        except TagStateError as exc:
            assert "invalid" in str(exc)
            break
        assert time.monotonic() < deadline, "a cached published tag was served long after its invalidation"
        time.sleep(0.01)


def _init(url: str, barrier: Any) -> None:
    barrier.wait(timeout=60)
    with CalibrationStore(url) as s:  # both create the schema of a fresh database at once, then both init
        s.init_defaults()


def test_two_processes_initialising_a_fresh_store_at_once(db_url: str) -> None:
    barrier = FORK.Barrier(2)
    procs = [FORK.Process(target=_init, args=(db_url, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with CalibrationStore(db_url) as s:
        assert s.tag_info("BOSS-6.6.4")["iovs"] == 44
        assert "BOSS-6.6.4" in {t["name"] for t in s.list_tags()}
        again = s.init_defaults()
        assert len(again.table.added) == 0 and len(again.table.present) == 44
