"""Job postings in the product's database: created as a draft, published, deleted to compensate.

These steps are transactional: their writes commit together with the step's outcome in the ledger.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from sqlalchemy import text

from saga import StepContext


def create_posting(ctx: StepContext[Any]) -> dict[str, str]:
    """Insert the draft posting (one per saga) pointing at the uploaded logo."""
    assert ctx.db is not None
    data = ctx.input
    posting_id = ctx.db.execute(text("""
        INSERT INTO job_postings (id, saga_id, company, title, description, contact_email, logo_key, status)
        VALUES (:id, :saga_id, :company, :title, :description, :email, :logo_key, 'draft')
        ON CONFLICT (saga_id) DO UPDATE SET saga_id = EXCLUDED.saga_id
        RETURNING id
    """), {
        "id": uuid4(), "saga_id": ctx.saga_id, "company": data.company, "title": data.title,
        "description": data.description, "email": data.contact_email, "logo_key": ctx.results["upload_logo"]["key"],
    }).scalar_one()
    return {"posting_id": str(posting_id)}


def delete_posting(ctx: StepContext[Any]) -> None:
    assert ctx.db is not None
    ctx.db.execute(text("DELETE FROM job_postings WHERE saga_id = :s"), {"s": ctx.saga_id})


def publish_posting(ctx: StepContext[Any]) -> dict[str, str]:
    """Make the posting live (the charge has succeeded)."""
    assert ctx.db is not None
    ctx.db.execute(text("UPDATE job_postings SET status = 'live', published_at = coalesce(published_at, now()) "
                        "WHERE saga_id = :s"), {"s": ctx.saga_id})
    return {"status": "live"}
