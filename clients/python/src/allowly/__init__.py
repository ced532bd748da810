"""Allowly's Python SDK: ask before every agent action, and verify the signed receipts.

    from allowly import Allowly
    client = Allowly(api_key, base_url="http://127.0.0.1:8080")
    result = client.check(authorization_id, "email.send", resource="inbox:42")
    final = client.wait_for_decision(result)      # confirm/escalate: waits for the human
    if final.allowed: send_the_email()

Offline verification (`allowly.verify`, written from docs/receipt-format.md, sharing nothing
with the server's code): `verify_receipt(receipt_json_bytes, keys)`, `verify_bundle(...)`.
"""

from . import errors
from .client import AsyncAllowly, Allowly
from .errors import AllowlyError, ApiError, TransportError
from .models import (
    ALLOW, APPROVED, CONFIRM, DECLINED, DENY, ESCALATE, Authorization, AuthorizationChange, CheckResult,
    Confirmation, Escalation, FinalDecision, Page, Receipt, Resolution,
)
from .offline import Report, verify_bundle, verify_receipt

__all__ = [
    "ALLOW", "APPROVED", "CONFIRM", "DECLINED", "DENY", "ESCALATE", "Allowly", "AllowlyError", "ApiError",
    "AsyncAllowly", "Authorization", "AuthorizationChange", "CheckResult", "Confirmation", "Escalation", "FinalDecision", "Page",
    "Receipt", "Report", "Resolution", "TransportError", "errors", "verify_bundle", "verify_receipt",
]
__version__ = "0.1.0"
