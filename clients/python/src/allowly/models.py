"""Typed views of the API's answers. Each keeps the JSON it was read from in `raw` (receipts
must be verified from exactly what the server sent: see `allowly.verify`). Field names are
the API's (docs/openapi.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

T = TypeVar("T")

ALLOW, DENY, CONFIRM, ESCALATE = "allow", "deny", "confirm", "escalate"
#: A person's answer to a confirmation or an escalation (`outcome`).
APPROVED, DECLINED = "approved", "declined"
#: `Receipt.pending_reason` when its checkpoint is signed but the server's witness quorum has not
#: cosigned it yet (header `Allowly-Pending-Reason`, docs/witness.md).
WITNESS_QUORUM = "witness_quorum"


@dataclass(frozen=True)
class Receipt:
    """A receipt: `pending` (durable, its leaf hash committed) or `signed` (with its inclusion
    proof and the signed checkpoint: it verifies alone, offline).

    `pending_reason` (from `get_receipt` only, header `Allowly-Pending-Reason`) says why a
    pending receipt is not signed yet when the server knows more than "not yet": `witness_quorum`
    (`WITNESS_QUORUM`) when its checkpoint is signed but not yet cosigned by the server's witness
    quorum (docs/witness.md). It is not part of the receipt document (`raw`), which verifies as
    the server sent it."""

    status: str
    log_index: int
    body: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)
    pending_reason: Optional[str] = None

    @property
    def receipt_id(self) -> str:
        # A pending receipt names it; a signed one only in its body (`id`).
        return str(self.raw.get("receipt_id") or self.body.get("id"))

    @property
    def signed(self) -> bool:
        return self.status == "signed"

    @classmethod
    def from_json(cls, v: dict[str, Any], pending_reason: Optional[str] = None) -> "Receipt":
        return cls(status=v["status"], log_index=int(v["log_index"]), body=v.get("body", {}), raw=v,
                   pending_reason=pending_reason if v["status"] == "pending" else None)


@dataclass(frozen=True)
class WitnessStatus:
    """Where the witnesses are (docs/witness.md), on a server that requires a witness quorum:
    receipts at log indices below `witnessed_size` are reported signed; `witnessed_size` is
    None while no checkpoint has the quorum's cosignatures."""

    quorum: int
    witnessed_size: Optional[int]

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "WitnessStatus":
        size = v.get("witnessed_size")
        return cls(quorum=int(v["quorum"]), witnessed_size=None if size is None else int(size))


@dataclass(frozen=True)
class Checkpoint:
    """`GET /v1/workspaces/{ws}/log/checkpoint`: the newest signed checkpoint (`checkpoint`, the
    C2SP signed note with the witnesses' cosignatures the server stored for it, for
    `verify_bundle(..., checkpoints=[...])`), and `witness` when the server requires a witness
    quorum (else None)."""

    workspace_id: str
    size: int
    checkpoint: str
    witness: Optional[WitnessStatus]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Checkpoint":
        w = v.get("witness")
        return cls(workspace_id=v["workspace_id"], size=int(v["size"]), checkpoint=v["checkpoint"],
                   witness=WitnessStatus.from_json(w) if w else None, raw=v)


def _receipt(v: Optional[dict[str, Any]]) -> Optional[Receipt]:
    return Receipt.from_json(v) if v else None


@dataclass(frozen=True)
class Authorization:
    id: str
    workspace_id: str
    subject: str
    scopes: list[str]
    resources: list[str]
    status: str
    trail_length: int
    expires_at: Optional[str]
    created_at: str
    revoked_at: Optional[str]
    metadata: Any
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Authorization":
        return cls(
            id=v["id"], workspace_id=v["workspace_id"], subject=v["subject"], scopes=list(v["scopes"]),
            resources=list(v.get("resources") or []), status=v["status"], trail_length=int(v["trail_length"]),
            expires_at=v.get("expires_at"), created_at=v["created_at"], revoked_at=v.get("revoked_at"),
            metadata=v.get("metadata"), raw=v,
        )


@dataclass(frozen=True)
class AuthorizationChange:
    """A created or revoked authorization and the receipt recording it."""

    authorization: Authorization
    receipt: Receipt

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "AuthorizationChange":
        return cls(Authorization.from_json(v["authorization"]), Receipt.from_json(v["receipt"]))


@dataclass(frozen=True)
class Confirmation:
    """A `confirm` decision: what to show the user (`scopes`, `resource`, `context`) and the
    nonce their answer goes to. From `check` (`status` None) or the inbox (`status` set)."""

    nonce: str
    expires_at: str
    scopes: list[str]
    resource: Optional[str]
    context: Any = None
    status: Optional[str] = None
    authorization_id: Optional[str] = None
    decision: Optional[str] = None
    reason: Optional[str] = None
    #: Who answered (the receipt's `approval.by`).
    by: Optional[str] = None
    check_receipt_id: Optional[str] = None
    answer_receipt_id: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Confirmation":
        return cls(
            nonce=v["nonce"], expires_at=v["expires_at"], scopes=list(v.get("scopes") or []),
            resource=v.get("resource"), context=v.get("context"), status=v.get("status"),
            authorization_id=v.get("authorization_id"), decision=v.get("decision"), reason=v.get("reason"),
            by=v.get("by"), check_receipt_id=v.get("check_receipt_id"),
            answer_receipt_id=v.get("answer_receipt_id"), raw=v,
        )


@dataclass(frozen=True)
class Escalation:
    """An escalation to an approver. From `check` only `id` and `expires_at` are known.
    `status`: `pending`, `approved`, `declined` or `expired`."""

    id: str
    expires_at: str
    status: Optional[str] = None
    authorization_id: Optional[str] = None
    scopes: list[str] = field(default_factory=list)
    resource: Optional[str] = None
    #: Who answered (the receipt's `approval.by`).
    by: Optional[str] = None
    check_receipt_id: Optional[str] = None
    resolution_receipt_id: Optional[str] = None
    #: Webhook endpoints its `escalation.requested` event went to.
    routed_to: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Escalation":
        return cls(
            id=v["id"], expires_at=v["expires_at"], status=v.get("status"),
            authorization_id=v.get("authorization_id"), scopes=list(v.get("scopes") or []),
            # `approver`: the same, the server's name for it before format 1.1.
            resource=v.get("resource"), by=v.get("by") or v.get("approver"),
            check_receipt_id=v.get("check_receipt_id"),
            resolution_receipt_id=v.get("resolution_receipt_id"), routed_to=list(v.get("routed_to") or []), raw=v,
        )


@dataclass(frozen=True)
class CheckResult:
    """`POST /v1/check`: the decision, why, and its durable receipt (every decision has one
    since format 1.1; None only in an `Idempotency-Key` replay of an answer recorded before).
    `confirmation` is set for `confirm`, `escalation` for `escalate`."""

    decision: str
    reason: str
    receipt: Optional[Receipt]
    confirmation: Optional[Confirmation]
    escalation: Optional[Escalation]
    raw: dict[str, Any] = field(repr=False)

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "CheckResult":
        c, e = v.get("confirmation"), v.get("escalation")
        return cls(
            decision=v["decision"], reason=v["reason"], receipt=_receipt(v.get("receipt")),
            confirmation=Confirmation.from_json(c) if c else None,
            escalation=Escalation.from_json(e) if e else None, raw=v,
        )


@dataclass(frozen=True)
class Resolution:
    """The final decision of a confirmation or an escalation (`allow` or `deny`)."""

    decision: str
    reason: str
    receipt: Optional[Receipt]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Resolution":
        return cls(decision=v["decision"], reason=v["reason"], receipt=_receipt(v.get("receipt")), raw=v)


@dataclass(frozen=True)
class FinalDecision:
    """What `wait_for_decision` answers: the decision after any human step, or the first one
    if there was none. `pending` is True when the wait ended before a human answered (the
    agent must not act: treat it as deny)."""

    decision: str
    reason: str
    receipt_id: Optional[str]
    pending: bool = False

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW and not self.pending


@dataclass(frozen=True)
class Page(Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: Optional[str]
