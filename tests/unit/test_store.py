"""The job store: rows survive reopening, the schema version is kept, a newer database is refused."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from lmtailor.errors import LmtailorError
from lmtailor.platform.store import SCHEMA_VERSION, File, Job, Store, new_id, now


def test_rows_survive_reopening_and_the_version_is_recorded(tmp_path):
    store = Store(tmp_path)
    f = store.add(File(id=new_id("file"), filename="t.jsonl", purpose="fine-tune", bytes=3, created_at=now(),
                       path="files/x.jsonl"))  # fmt: skip
    job = store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="queued", model="m", created_at=now(),
                        training_file=f.id, result_files=[]))  # fmt: skip
    second = store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="queued", model="m", created_at=now(),
                           result_files=[]))  # fmt: skip
    store.log(job.id, "hello", data={"step": 1})
    again = Store(tmp_path)
    assert again.get(File, f.id).filename == "t.jsonl"
    assert [j.id for j in again.jobs()] == [job.id, second.id] and second.seq == job.seq + 1
    with again.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).scalar() == str(
            SCHEMA_VERSION
        )
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_database_from_a_newer_lmtailor_is_refused(tmp_path):
    store = Store(tmp_path)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(LmtailorError, match="schema version 99"):
        Store(tmp_path)


def test_any_database_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    store = Store(tmp_path / "home", url)
    store.add(File(id="file-1", filename="a", purpose="fine-tune", bytes=1, created_at=now(), path="files/a"))
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "home" / "lmtailor.db").exists()


def test_status_changes_hold_only_from_the_status_they_expect(tmp_path):
    """The API, the worker and the job process race on a job: a change made from a stale read is refused."""
    store = Store(tmp_path)
    job = store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="queued", model="m", created_at=now(),
                        result_files=[]))  # fmt: skip
    assert store.transition(job.id, ("queued",), status="validating_files", attempts=1)
    assert not store.transition(
        job.id, ("queued", "paused"), status="cancelled"
    )  # the worker claimed it first
    assert store.ask(job.id, "cancel")
    assert not store.ask(job.id, "pause")  # a pending cancel is never replaced by a pause
    assert store.get(Job, job.id).request == "cancel"
    assert store.transition(job.id, ("validating_files", "running"), status="succeeded")
    assert not store.ask(job.id, "cancel")  # nothing to cancel any more
    assert store.get(Job, job.id).status == "succeeded"


def test_a_status_change_and_its_events_are_written_together_or_not_at_all(tmp_path):
    """A client that sees a job succeed must find its final events (CI once listed them in between)."""
    from sqlalchemy.exc import StatementError

    from lmtailor.platform.store import Event

    store = Store(tmp_path)
    job = store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="running", model="m", created_at=now(),
                        result_files=[]))  # fmt: skip

    def said():
        with store.session() as s:
            return [e.message for e in s.query(Event).filter_by(job_id=job.id).order_by(Event.seq)]

    unwritable = {"message": "x", "data": {1j}}  # not JSON: the change is undone with the first event
    with pytest.raises(StatementError):
        store.transition(job.id, ("running",), status="succeeded", events=["created", unwritable])
    assert store.get(Job, job.id).status == "running" and said() == []
    assert not store.transition(job.id, ("queued",), status="cancelled", events=["cancelled"])
    assert said() == []  # no change, no event
    assert store.transition(job.id, ("running",), status="succeeded",
                            events=["created", {"message": "done", "level": "info", "data": {"retention": 1}}])  # fmt: skip
    assert store.get(Job, job.id).status == "succeeded" and said() == ["created", "done"]


def test_concurrent_adds_take_distinct_sequence_numbers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    stores = [Store(tmp_path) for _ in range(4)]  # as the server and job processes: one engine each

    def add(i):
        return stores[i % 4].add(File(id=new_id("file"), filename=f"{i}", purpose="fine-tune", bytes=1,
                                      created_at=now(), path=f"files/{i}")).seq  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(add, range(40)))
    assert sorted(seqs) == list(range(1, 41))


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    """A home from before `interrupted_at` and `restarts`: the columns added, the version raised, the rows kept."""
    store = Store(tmp_path)
    job = store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="running", model="m", created_at=now(),
                        result_files=[], interruptions=2))  # fmt: skip
    with store.engine.begin() as conn:  # back to version 1's table
        conn.execute(text("ALTER TABLE jobs DROP COLUMN interrupted_at"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN restarts"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    store.engine.dispose()
    again = Store(tmp_path)
    row = again.get(Job, job.id)
    # version 1 counted server restarts and process deaths together: the new rule's counts start from zero
    assert (row.status, row.interruptions, row.restarts, row.interrupted_at) == ("running", 0, 0, None)
    assert (
        again.transition(job.id, ("running",), interrupted_at=5)
        and again.get(Job, job.id).interrupted_at == 5
    )
    with again.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).scalar() == str(
            SCHEMA_VERSION
        )
