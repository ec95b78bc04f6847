"""The worker: runs queued jobs, each in its own process, and carries out cancel requests.

Each job process gets this machine's cores divided by the number of workers (two PyTorch processes
fighting over the same cores are 10-20x slower than one after the other), dies with the server (Linux's
parent-death signal), and writes its own final status. On start the worker recovers what a killed server
left behind: a job still marked running is requeued to resume from its last checkpoint, or failed with the
reason after MAX_ATTEMPTS starts, so no job stays `running` forever.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

from lmtailor.platform.store import Job, Store, now

MAX_ATTEMPTS = 3
ACTIVE = ("validating_files", "running")
KILL_AFTER = 10.0  # seconds between SIGTERM and SIGKILL of a cancelled job


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the server (the thread that started us) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Worker:
    def __init__(self, store: Store, workers: int = 1, poll: float = 0.5):
        self.store = store
        self.workers = max(1, workers)
        self.poll = poll
        self.procs: dict[str, subprocess.Popen] = {}
        self._kill_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmtailor-worker", daemon=True)

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        for job_id, proc in list(self.procs.items()):
            # a clean shutdown: the jobs resume from their checkpoints at the next start
            _signal(proc, signal.SIGTERM)
            proc.wait(timeout=KILL_AFTER)
            self.store.update_job(job_id, status="queued", pid=None)
            self.store.log(job_id, "The server stopped; the job will resume from its last checkpoint")

    def recover(self) -> None:
        """Jobs a killed server left running: requeue (they resume from a checkpoint) or fail after retries."""
        for job in self.store.jobs(ACTIVE):
            if job.pid and _is_job_process(job.pid, job.id):
                os.kill(job.pid, signal.SIGKILL)  # an orphan of the previous server: it must not run twice
            if job.request == "cancel":
                self._finish_cancel(job.id)
            elif job.attempts >= MAX_ATTEMPTS:
                reason = f"the job was interrupted {job.attempts} times (server or process killed)"
                self.store.update_job(job.id, status="failed", finished_at=now(), pid=None,
                                      error={"code": "interrupted", "message": reason, "param": None})  # fmt: skip
                self.store.log(job.id, f"Job failed: {reason}", level="error")
            else:
                self.store.update_job(job.id, status="queued", pid=None)
                self.store.log(
                    job.id, "The server restarted during this job; it will resume from its last checkpoint"
                )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:  # the worker must outlive a bad row or a locked database
                print(f"lmtailor worker: {type(e).__name__}: {e}", file=sys.stderr)
            self._wake.wait(self.poll)
            self._wake.clear()

    def _tick(self) -> None:
        for job_id, proc in list(self.procs.items()):
            code = proc.poll()
            job = self.store.get(Job, job_id)
            if code is None:
                if job.request == "cancel":
                    self._cancel_running(job_id, proc)
                continue
            del self.procs[job_id]
            self._kill_at.pop(job_id, None)
            if job.request == "cancel":
                self._finish_cancel(job_id)
            elif job.status in ACTIVE:  # died without writing its status: out of memory, killed, a bug
                self.store.update_job(job_id, status="failed", finished_at=now(), pid=None, error={
                    "code": "process_died", "param": None,
                    "message": f"the job process exited with code {code}; see jobs/{job_id}/job.log"})  # fmt: skip
                self.store.log(job_id, f"Job failed: the job process exited with code {code}", level="error")
        for job in self.store.jobs(("queued",)):
            if len(self.procs) >= self.workers:
                break
            self._spawn(job)

    def _spawn(self, job: Job) -> None:
        folder = self.store.home / "jobs" / job.id
        folder.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "lmtailor.platform.runjob", job.id, "--home", str(self.store.home),
               "--db", self.store.url]  # fmt: skip
        with open(folder / "job.log", "ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
        self.procs[job.id] = proc
        self.store.update_job(job.id, status="validating_files", pid=proc.pid, attempts=job.attempts + 1,
                              request=None if job.request == "pause" else job.request)  # fmt: skip

    def _cancel_running(self, job_id: str, proc: subprocess.Popen) -> None:
        if job_id not in self._kill_at:
            _signal(proc, signal.SIGTERM)
            self._kill_at[job_id] = time.monotonic() + KILL_AFTER
        elif time.monotonic() > self._kill_at[job_id]:
            _signal(proc, signal.SIGKILL)

    def _finish_cancel(self, job_id: str) -> None:
        self.store.update_job(job_id, status="cancelled", finished_at=now(), pid=None, request=None)
        self.store.log(job_id, "Job cancelled; checkpoints written so far are kept")


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the job and anything it started
    except ProcessLookupError:
        pass


def _is_job_process(pid: int, job_id: str) -> bool:
    """Whether `pid` is still this job's process (a pid can be reused by anything after it died)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"lmtailor.platform.runjob" in args and job_id.encode() in args
