"""Allowly's Python SDK: ask before every agent action, and verify the signed receipts.

    from allowly import Allowly
    client = Allowly(api_key, base_url="http://127.0.0.1:8080")
    result = client.check(authorization_id, "email.send", resource="inbox:42")
    final = client.wait_for_decision(result)      # confirm/escalate: waits for the human
    if final.allowed: send_the_email()

Offline verification (`allowly.verify`, written from docs/receipt-format.md, sharing nothing
with the server's code): `verify_receipt(receipt_json_bytes, keys)`, `verify_bundle(...)`, and
with a witness quorum (docs/witness.md): `verify_bundle(..., witness=witness_policy([vkey, ...], 2))`.
"""

from . import errors
from .client import PENDING_REASON_HEADER, AsyncAllowly, Allowly
from .errors import AllowlyError, ApiError, TransportError
from .models import (
    ALLOW, APPROVED, CONFIRM, DECLINED, DENY, ESCALATE, WITNESS_QUORUM, Authorization, AuthorizationChange,
    Checkpoint, CheckResult, Confirmation, Escalation, FinalDecision, Page, Receipt, Resolution, WitnessStatus,
)
from .offline import Report, WitnessPolicy, verify_bundle, verify_receipt, witness_policy

__all__ = [
    "ALLOW", "APPROVED", "CONFIRM", "DECLINED", "DENY", "ESCALATE", "PENDING_REASON_HEADER", "WITNESS_QUORUM",
    "Allowly", "AllowlyError",
    "ApiError", "AsyncAllowly", "Authorization", "AuthorizationChange", "CheckResult", "Checkpoint", "Confirmation",
    "Escalation", "FinalDecision", "Page", "Receipt", "Report", "Resolution", "TransportError", "WitnessPolicy",
    "WitnessStatus", "errors", "verify_bundle", "verify_receipt", "witness_policy",
]
__version__ = "0.1.0"
