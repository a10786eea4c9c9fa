"""kubeadm bootstrap tokens: ``[a-z0-9]{6}.[a-z0-9]{16}`` with an expiry."""

from __future__ import annotations

import re
import secrets
import string
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from pke_vsphere.contracts.pki import BootstrapToken

TOKEN_PATTERN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_ALPHABET = string.ascii_lowercase + string.digits


def mint(ttl: timedelta, now: datetime | None = None) -> BootstrapToken:
    now = now or datetime.now(UTC)
    token_id = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(16))
    return BootstrapToken(token=SecretStr(f"{token_id}.{secret}"), expires_at=now + ttl)


def usable(token: BootstrapToken | None, now: datetime, margin: timedelta) -> bool:
    """Whether a token stays valid for at least ``margin``; never hand out one about to expire."""
    return token is not None and token.expires_at - margin > now
