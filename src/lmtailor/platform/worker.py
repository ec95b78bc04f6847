"""The worker: runs queued jobs, each in its own process, and carries out cancel requests.

Each job process gets this machine's cores divided by the number of workers (two PyTorch processes
fighting over the same cores are 10-20x slower than one after the other), dies with the server (Linux's
parent-death signal, set by the job process itself: runjob.main), and writes its own final status. A job
process that ends without it (killed, out of memory) is started again from the job's last checkpoint; on start
the worker recovers what a killed server left behind the same way: a job still marked running is requeued to
resume from its last checkpoint. A job whose own process dies MAX_ATTEMPTS times in a row without a new
checkpoint between the deaths (out of memory at the same step each time), or whose server restarts
MAX_RESTARTS times so, fails with the reason, so no job restarts without end (`resume` may start it again);
a job that gets further between them always goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from lmtailor.platform.store import ACTIVE, Job, Store, now

MAX_ATTEMPTS = 3  # deaths of a job's own process in a row without a new checkpoint
# restarts of its server in a row without a new checkpoint (a server killed again and again for the job's sake)
MAX_RESTARTS = 20
KILL_AFTER = 10.0  # seconds between SIGTERM and SIGKILL of a cancelled job


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
        if self._thread.ident is not None:  # a worker never started has no thread to wait for
            self._thread.join(timeout=30)
        for job_id, proc in list(self.procs.items()):
            # a clean shutdown: running jobs resume from their checkpoints at the next start
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_AFTER)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
            del self.procs[job_id]
            self._settle(job_id, "The server stopped")

    def recover(self) -> None:
        """Jobs a killed server left running: requeued to resume from their checkpoints. A server's death is
        seldom the job's doing, so it has a limit of its own, far above a job process's: MAX_RESTARTS in a row
        without a new checkpoint (a server killed again and again for the job's memory, say, by a cgroup)."""
        for job in self.store.jobs(ACTIVE):
            if job.pid and _is_job_process(job.pid, job.id):
                os.kill(job.pid, signal.SIGKILL)  # an orphan of the previous server: it must not run twice
            self._interrupted(job.id, "restarts", MAX_RESTARTS, "The server restarted during this job",
                              "the server restarted {n} times during this job without a new checkpoint between, "
                              "the limit", "interrupted")  # fmt: skip

    def _interrupted(self, job_id: str, counter: str, limit: int, event: str, reason: str, code: str) -> None:
        """A job cut short without its final status: its pending request carried out, or requeued to resume from
        its last checkpoint (`event` says why). `counter` (interruptions: its process died; restarts: its
        server did) counts such cuts in a row without a new checkpoint, and a new checkpoint sets both back; at
        `limit` the job fails with `reason` ({n}: the count) and error `code`, which `resume` revives."""
        job = self.store.get(Job, job_id)  # as it is now: a cancel or pause may have come in meanwhile
        newest = self.store.newest_checkpoint(job_id)
        further = job.interrupted_at is not None and newest > job.interrupted_at
        counts = {"interruptions": 0, "restarts": 0} if further else {
            "interruptions": job.interruptions or 0, "restarts": job.restarts or 0}  # fmt: skip
        counts[counter] += 1
        n = counts[counter]
        if job.request is None and n >= limit:
            reason = reason.format(n=n)
            self.store.transition(job_id, ACTIVE, status="failed", finished_at=now(), pid=None,
                                  interrupted_at=newest, error={"code": code, "message": reason, "param": None},
                                  events=[{"message": f"Job failed: {reason}; resume starts it again from its "
                                           "last checkpoint", "level": "error"}], **counts)  # fmt: skip
            return
        self.store.transition(job_id, ACTIVE, interrupted_at=newest, **counts)
        self._settle(job_id, event)

    def _settle(self, job_id: str, why: str) -> None:
        """A job whose process is gone but which did not finish: carry out its pending request, or requeue it."""
        job = self.store.get(Job, job_id)  # as it is now: a cancel or pause may have come in meanwhile
        if job.request == "cancel":
            self._finish_cancel(job.id)
        elif job.request == "pause":
            self.store.transition(job.id, ACTIVE, status="paused", pid=None, request=None,
                                  events=[f"{why}; the job is paused and resumes from its last checkpoint"])  # fmt: skip
        else:
            self.store.transition(job.id, ACTIVE, status="queued", pid=None,
                                  events=[f"{why}; the job will resume from its last checkpoint"])  # fmt: skip

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
            if job.status in ACTIVE:  # it died without writing its status: out of memory, killed, a bug
                how = _exit(code)
                self._interrupted(job_id, "interruptions", MAX_ATTEMPTS, f"The job process {how}",
                                  f"the job process {how}: {{n}} times in a row without a new checkpoint, the "
                                  f"limit; see jobs/{job_id}/job.log", "process_died")  # fmt: skip
        for job in self.store.jobs(("queued",)):
            if len(self.procs) >= self.workers:
                break
            self._spawn(job)

    def _spawn(self, job: Job) -> None:
        # claim the job before starting its process: a cancel or pause that came in since we listed the
        # queue wins, and the job process's own status writes come after ours
        if job.id in self.procs or not self.store.transition(
            job.id, ("queued",), status="validating_files", attempts=job.attempts + 1, pid=None, request=None
        ):
            return
        folder = self.store.home / "jobs" / job.id
        folder.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
               "LMTAILOR_PARENT_PID": str(os.getpid())}  # fmt: skip
        cmd = [sys.executable, "-m", "lmtailor.platform.runjob", job.id, "--home", str(self.store.home),
               "--db", self.store.url]  # fmt: skip
        try:
            with open(folder / "job.log", "ab") as log:
                proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        except OSError as e:  # the failure as the job's last event too, where a client reading events looks
            said = f"cannot start the job process: {e}"
            self.store.transition(job.id, ACTIVE, status="failed", finished_at=now(), events=[{"message": said, "level": "error"}],
                                  error={"code": "internal_error", "message": said, "param": None})  # fmt: skip
            return
        self.procs[job.id] = proc
        self.store.transition(job.id, ACTIVE, pid=proc.pid)

    def _cancel_running(self, job_id: str, proc: subprocess.Popen) -> None:
        if job_id not in self._kill_at:
            _signal(proc, signal.SIGTERM)
            self._kill_at[job_id] = time.monotonic() + KILL_AFTER
        elif time.monotonic() > self._kill_at[job_id]:
            _signal(proc, signal.SIGKILL)

    def _finish_cancel(self, job_id: str) -> None:
        self.store.transition(job_id, ACTIVE, status="cancelled", finished_at=now(), pid=None, request=None,
                              events=["Job cancelled; checkpoints written so far are kept"])  # fmt: skip


def _exit(code: int) -> str:
    """How a process ended, in words: `was killed by SIGKILL (out of memory, or killed)`, `exited with code 1`."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        return f"was killed by {name}" + (" (out of memory, or killed)" if -code == signal.SIGKILL else "")
    return f"exited with code {code}"


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
