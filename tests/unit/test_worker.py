"""The worker's limits on a job cut short again and again, through a real store (SQLite) and no job process:
a restart of its server and a death of its own process each count in a row only while no new checkpoint
comes between them."""

from __future__ import annotations

from lmtailor.platform.store import Checkpoint, Job, Store, new_id, now
from lmtailor.platform.worker import MAX_ATTEMPTS, MAX_RESTARTS, Worker


def running_job(store: Store) -> str:
    return store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="running", model="m", created_at=now(),
                         result_files=[])).id  # fmt: skip


def checkpoint(store: Store, job_id: str, step: int) -> None:
    store.add(Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=step, created_at=now(), model=f"m:{step}",
                         path=f"jobs/{job_id}/checkpoint-{step}"))  # fmt: skip


def restart(store: Store, worker: Worker, job_id: str) -> Job:
    """The server killed while the job ran, then started again: the job is running, the worker recovers it."""
    store.transition(job_id, ("queued",), status="running")
    worker.recover()
    return store.get(Job, job_id)


def test_a_job_goes_on_through_server_restarts_while_it_gets_further_and_fails_when_it_does_not(tmp_path):
    store = Store(tmp_path)
    worker = Worker(store)
    job_id = running_job(store)
    for n in range(1, 2 * MAX_RESTARTS):  # far past the limit, each restart after a new checkpoint
        checkpoint(store, job_id, 4 * n)
        job = restart(store, worker, job_id)
        assert job.status == "queued" and job.restarts == 1, (n, job.restarts)
    for n in range(2, MAX_RESTARTS):  # then no checkpoint between restarts
        assert restart(store, worker, job_id).restarts == n
    failed = restart(store, worker, job_id)
    assert failed.status == "failed" and failed.error["code"] == "interrupted"
    assert (
        f"restarted {MAX_RESTARTS} times during this job without a new checkpoint" in failed.error["message"]
    )


def test_a_process_death_and_a_server_restart_count_apart_and_a_checkpoint_sets_both_back(tmp_path):
    store = Store(tmp_path)
    worker = Worker(store)
    job_id = running_job(store)
    checkpoint(store, job_id, 4)
    for n in range(1, MAX_ATTEMPTS):
        worker._interrupted(
            job_id, "interruptions", MAX_ATTEMPTS, "The job process was killed", "{n}", "process_died"
        )
        store.transition(job_id, ("queued",), status="running")
        assert store.get(Job, job_id).interruptions == n
    job = restart(store, worker, job_id)  # a server restart does not spend the process's limit
    assert (job.status, job.interruptions, job.restarts) == ("queued", MAX_ATTEMPTS - 1, 1)
    store.transition(job_id, ("queued",), status="running")
    checkpoint(store, job_id, 8)
    worker._interrupted(
        job_id, "interruptions", MAX_ATTEMPTS, "The job process was killed", "{n}", "process_died"
    )
    job = store.get(Job, job_id)
    assert (job.status, job.interruptions, job.restarts) == ("queued", 1, 0)


def test_a_job_whose_process_cannot_start_fails_with_the_reason_as_its_last_event(tmp_path, monkeypatch):
    """No Python to start (here: a path that is not there): the job fails at once, the reason in its error and as
    an event written with the status change."""
    from sqlalchemy import select

    from lmtailor.platform.store import Event

    store = Store(tmp_path)
    job = store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="queued", model="m", created_at=now(),
                        result_files=[]))  # fmt: skip
    monkeypatch.setattr("lmtailor.platform.worker.sys.executable", str(tmp_path / "no-python"))
    Worker(store)._spawn(job)
    failed = store.get(Job, job.id)
    assert failed.status == "failed" and failed.error["code"] == "internal_error"
    with store.session() as s:
        events = list(s.scalars(select(Event).where(Event.job_id == job.id).order_by(Event.seq)))
    assert [(e.level, e.message) for e in events] == [("error", failed.error["message"])]
    assert failed.error["message"].startswith("cannot start the job process: ")
