"""API tokens: made, found, listed and revoked; only a token's hash is stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.models import ApiToken
from storage.queries import InvalidInput, require_project

TOKEN_PREFIX = "pp_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class IssuedToken(NamedTuple):
    """A token just made: its row, and the raw value (shown once, never stored)."""

    token: ApiToken
    raw: str


def create_token(
    s: Session, *, project_ids: Sequence[int] = (), admin: bool = False, name: str = ""
) -> IssuedToken:
    """A new bearer token; the raw value is returned once and only its hash is stored."""
    if not admin and not project_ids:
        raise InvalidInput("a token needs at least one project (--project N) or --admin")
    for project_id in project_ids:
        require_project(s, project_id)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        token_hash=hash_token(raw), name=name, project_ids=sorted(set(project_ids)), admin=admin
    )
    s.add(token)
    s.flush()
    return IssuedToken(token, raw)


def find_token(s: Session, raw: str) -> ApiToken | None:
    return s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(raw)))


def list_tokens(s: Session) -> Sequence[ApiToken]:
    return s.scalars(select(ApiToken).order_by(ApiToken.id)).all()


def revoke_token(s: Session, token_id: int) -> bool:
    return bool(s.execute(delete(ApiToken).where(ApiToken.id == token_id)).rowcount)
