"""The durable work queue's table: requests from gateways to worker processes.

A row is a request not yet done (processing a data source, running a plan). It is deleted
by the worker that finished it, so "a row exists" means "queued or in hand". The claim of
a worker is a session-level advisory lock on the row's id (see actors/work_queue.py): it
lives exactly as long as the worker's connection, so a killed worker's request becomes
claimable the moment PostgreSQL sees its connection close.

The partial unique index makes "one plan run per project" a constraint of the database,
atomic across any number of gateways.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import Base, utcnow

PROCESS_DATA_SOURCE = "process_data_source"
RUN_PLAN = "run_plan"

# The first key of the two-int advisory locks that mark a claimed request (the second is
# the request id): an arbitrary constant, so these locks do not collide with others.
CLAIM_LOCK_NAMESPACE = 0x504C5051  # "PLPQ"

# NOTIFY channels: a request was queued (wake a worker); a stop was asked (payload: the
# project id).
WORK_CHANNEL = "planpulse_work"
STOP_CHANNEL = "planpulse_stop"


class WorkRequest(Base):
    __tablename__ = "work_requests"
    __table_args__ = (
        Index(
            "uq_work_requests_one_run_per_project",
            "project_id",
            unique=True,
            postgresql_where=text("kind = 'run_plan'"),
            sqlite_where=text("kind = 'run_plan'"),
        ),
        Index("ix_work_requests_data_source", "data_source_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    data_source_id: Mapped[int | None] = mapped_column(Integer)
    # A run's target node (executeNode); None runs the whole plan.
    target: Mapped[str | None] = mapped_column(String(200))
    # How many times a worker claimed it: above 1, an earlier worker died holding it.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
