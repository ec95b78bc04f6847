"""The store: files, jobs, events, checkpoints and models, on SQLAlchemy (SQLite under the home by default).

The server and each job process open the same database; SQLite runs in WAL mode with a busy timeout so
they do not lock each other out. The schema carries a version; `upgrade` brings an older database forward
step by step, so an old home stays readable.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from lmtailor.home import home_dir

SCHEMA_VERSION = 2
ACTIVE = ("validating_files", "running")  # a job process is (or should be) working on it


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)  # order of creation, for `after` cursors
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to the home
    deleted: Mapped[bool] = mapped_column(default=False)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # fine_tune | eval
    status: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(Text)  # as the client named it
    base_ref: Mapped[str | None] = mapped_column(Text)  # what models.catalog.resolve loads for it
    training_file: Mapped[str | None] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[dict] = mapped_column(JSON, default=dict)
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)  # as asked ("auto" or numbers)
    options: Mapped[dict] = mapped_column(JSON, default=dict)  # lmtailor's own spec keys / an eval spec
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    job_metadata: Mapped[dict | None] = mapped_column("metadata", JSON)
    created_at: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text)
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[dict | None] = mapped_column(JSON)
    request: Mapped[str | None] = mapped_column(String(16))  # cancel | pause: asked, not yet done
    pid: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # processes started for it
    # deaths of its own process, and restarts of its server, each in a row with no new checkpoint between them
    # (the worker's limits count these), and the newest checkpoint's step at the last of either
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int | None] = mapped_column(Integer, default=0)
    interrupted_at: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[str | None] = mapped_column(Text)  # the job's folder, relative to the home
    chosen: Mapped[dict | None] = mapped_column(JSON)  # hyperparameters lmtailor used


class Event(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(Text)  # the servable name
    path: Mapped[str] = mapped_column(Text)  # relative to the home
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)


class Model(Base):
    """A model made by a job (a fine-tuned model or a checkpoint), servable by name."""

    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the home
    adapter: Mapped[str | None] = mapped_column(
        Text
    )  # adapter folder relative to the home, if served on a base
    base_path: Mapped[str | None] = mapped_column(Text)  # absolute folder of the base weights
    created_at: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)


class Vote(Base):
    """A judgement in the web console's arena: which of two answers to one prompt was better."""

    __tablename__ = "votes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[int] = mapped_column(Integer)
    model_a: Mapped[str] = mapped_column(Text)
    model_b: Mapped[str] = mapped_column(Text)
    winner: Mapped[str] = mapped_column(String(8))  # a | b | tie | bad (both bad)
    blind: Mapped[bool] = mapped_column(default=False)
    prompt: Mapped[str | None] = mapped_column(Text)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class Store:
    def __init__(self, home=None, url: str | None = None):
        self.home = home_dir(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{self.home / 'lmtailor.db'}"
        sqlite = self.url.startswith("sqlite")
        self.engine = create_engine(self.url, connect_args={"timeout": 30} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        upgrade(self.engine)

    def path(self, relative: str) -> Path:
        return self.home / relative

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.home.resolve()))

    # ---- small helpers used by the API, the worker and the job process ----------------------------------

    def get(self, cls, key):
        with self.session() as s:
            return s.get(cls, key)

    def add(self, obj) -> Any:
        with self.session() as s, s.begin():
            cls = type(obj)
            if isinstance(obj, File | Job) and obj.seq is None:  # events and checkpoints count by themselves
                # the next number inside the INSERT itself: two processes adding at once cannot take the same
                obj.seq = select(func.coalesce(func.max(cls.seq), 0) + 1).scalar_subquery()
                s.add(obj)
                s.flush()
                obj.seq = s.scalar(select(cls.seq).where(cls.id == obj.id))
            else:
                s.add(obj)
        return obj

    def add_job(self, job: Job, events: list[Event]) -> Job:
        """A job with its events in one transaction: a recorded run appears whole or not at all."""
        with self.session() as s, s.begin():
            job.seq = select(func.coalesce(func.max(Job.seq), 0) + 1).scalar_subquery()
            s.add(job)
            s.flush()
            for e in events:
                e.job_id = job.id
                s.add(e)
            job.seq = s.scalar(select(Job.seq).where(Job.id == job.id))
        return job

    def add_file(self, file_id: str, rel: str, filename: str, purpose: str) -> File:
        """The row of a file already written at `rel` in the home (an upload, a cleaned or split data set, a
        job's result file), its size read from the disk."""
        return self.add(File(id=file_id, filename=filename, purpose=purpose, bytes=self.path(rel).stat().st_size,
                             created_at=now(), path=rel))  # fmt: skip

    def update_job(self, job_id: str, **values) -> Job:
        with self.session() as s, s.begin():
            job = s.get(Job, job_id)
            for k, v in values.items():
                setattr(job, k, v)
        return job

    def transition(self, job_id: str, statuses: tuple[str, ...], events: tuple = (), **values) -> bool:
        """Update a job only while its status is one of `statuses`, in one statement: the API, the worker and
        the job process change jobs concurrently, and a stale read must not overwrite a newer status.

        `events` (each a message, or a dict of log()'s arguments) are written in the same transaction and only
        if the job changed: a client that sees the new status also sees the events that go with it."""
        with self.session() as s, s.begin():
            done = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(statuses)).values(**values))
            if done.rowcount != 1:
                return False
            for e in events:
                s.add(new_event(job_id, **({"message": e} if isinstance(e, str) else e)))
            return True

    def ask(self, job_id: str, request: str) -> bool:
        """Record a cancel or pause request for an active job; a pending cancel is never replaced by a pause."""
        with self.session() as s, s.begin():
            q = update(Job).where(Job.id == job_id, Job.status.in_(("validating_files", "running")))
            if request != "cancel":
                q = q.where((Job.request.is_(None)) | (Job.request != "cancel"))
            return s.execute(q.values(request=request)).rowcount == 1

    def log(self, job_id: str, message: str, level: str = "info", type: str = "message", data=None) -> None:
        self.add(new_event(job_id, message, level, type, data))

    def jobs(
        self, statuses: tuple[str, ...] | None = None, kinds: tuple[str, ...] | None = None
    ) -> list[Job]:
        with self.session() as s:
            q = select(Job).order_by(Job.seq)
            if statuses:
                q = q.where(Job.status.in_(statuses))
            if kinds:
                q = q.where(Job.kind.in_(kinds))
            return list(s.scalars(q))

    def newest_checkpoint(self, job_id: str) -> int:
        """The step of the job's newest registered checkpoint; 0 when it has none."""
        with self.session() as s:
            return s.scalar(
                select(func.coalesce(func.max(Checkpoint.step), 0)).where(Checkpoint.job_id == job_id)
            )

    def models(self) -> list[Model]:
        with self.session() as s:
            return list(s.scalars(select(Model).order_by(Model.created_at)))


def new_event(job_id: str, message: str, level: str = "info", type: str = "message", data=None) -> Event:
    return Event(id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level, type=type, message=message,
                 data=data)  # fmt: skip


def _sqlite_pragmas(conn, _record) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (server + job processes)
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# Upgrades from version N-1 to N, applied in order. Version 1 is the first schema; create_all makes the newest.
UPGRADES: dict[int, list[str]] = {
    # version 1 counted server restarts and process deaths together: the new counts start from zero
    2: [
        "ALTER TABLE jobs ADD COLUMN interrupted_at INTEGER",
        "ALTER TABLE jobs ADD COLUMN restarts INTEGER",
        "UPDATE jobs SET interruptions = 0, restarts = 0",
    ],
}


def upgrade(engine) -> int:
    """Create missing tables, then apply each upgrade above the stored version; returns the version."""
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        row = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).first()
        version = int(row[0]) if row else SCHEMA_VERSION  # no version yet: create_all just made the newest
        if version > SCHEMA_VERSION:
            from lmtailor.errors import LmtailorError

            raise LmtailorError(
                f"this home's database has schema version {version}, newer than this lmtailor "
                f"({SCHEMA_VERSION}): upgrade lmtailor"
            )
        for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
            for statement in UPGRADES.get(v, []):
                try:
                    conn.execute(text(statement))
                except OperationalError as e:  # another process (a job, a second CLI) upgraded it meanwhile
                    if "duplicate column" not in str(e):
                        raise
        value = json.dumps(SCHEMA_VERSION)
        if row:
            conn.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": value})
        else:
            # two processes opening a fresh database at once: the second's row is the same, and is dropped
            conn.execute(text("INSERT INTO meta (key, value) VALUES ('schema_version', :v) "
                              "ON CONFLICT (key) DO NOTHING"), {"v": value})  # fmt: skip
    return SCHEMA_VERSION
