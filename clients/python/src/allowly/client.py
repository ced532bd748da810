"""The clients: `Allowly` (sync) and `AsyncAllowly` (asyncio), both on httpx.

Every endpoint is defined once, in `_Endpoints`, as a request plus a parser; the two clients
differ only in how they send it (`_call`), page through lists and wait. What both do on every
request:

- POSTs carry an `Idempotency-Key` (a fresh UUID per call unless one is given), the same on
  every retry, so a retry after a lost answer gets the first answer, never a second effect;
- 429 and 503 answers that carry `Retry-After` (they pass by themselves) and connection errors
  are retried up to `max_retries` times, waiting `Retry-After` or an exponential backoff with
  jitter (capped at `max_backoff`), whichever is longer; a `Retry-After` beyond `max_backoff`
  is raised rather than waited for, and a 503 without one (a diverged log) at once;
- a problem answer becomes the typed error of its `code` (`allowly.errors`).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Optional, TypeVar

import httpx

from . import errors
from .models import (
    CONFIRM, DENY, ESCALATE, Authorization, AuthorizationChange, Checkpoint, CheckResult, Confirmation, Escalation,
    FinalDecision, Receipt, Resolution,
)

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: Longest wait of one long-poll the server accepts (seconds).
MAX_LONG_POLL = 60


@dataclass
class _Request:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    idempotency_key: Optional[str] = None
    #: Extra seconds for the answer (a long-poll's wait).
    extra_timeout: float = 0.0
    #: The parser gets `(value, response headers)` instead of the value alone.
    with_headers: bool = False

    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if self.method == "POST":
            h["Idempotency-Key"] = self.idempotency_key or str(uuid.uuid4())
            self.idempotency_key = h["Idempotency-Key"]
        return h

    def query(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if v is not None}


class _Retry:
    """When to retry and how long to wait first."""

    def __init__(self, max_retries: int, backoff: float, max_backoff: float):
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """The backoff (capped at `max_backoff`), and never less than the server's Retry-After."""
        exp = self.backoff * (2 ** attempt)
        jittered = exp / 2 + random.uniform(0, exp / 2)
        return max(min(jittered, self.max_backoff), retry_after or 0.0)

    def after(self, attempt: int, e: Exception) -> float:
        """How long to wait before retrying attempt `attempt` that failed with `e`; raises
        instead when it is not to be retried (the typed error, or `errors.TransportError`)."""
        if isinstance(e, errors.ApiError):
            if attempt >= self.max_retries or not self.retryable(e):
                raise e
            return self.delay(attempt, e.retry_after)
        if attempt >= self.max_retries:
            raise errors.TransportError(str(e)) from e
        return self.delay(attempt, None)

    def retryable(self, e: errors.ApiError) -> bool:
        """A 429/503 that passes by itself (Retry-After), soon enough to wait for: a longer
        Retry-After is raised rather than cut short (retrying before it would only be refused)."""
        return e.status in (429, 503) and e.retry_after is not None and e.retry_after <= self.max_backoff


def _retry_after(resp: httpx.Response) -> Optional[float]:
    v = resp.headers.get("retry-after")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _outcome(resp: httpx.Response) -> tuple[Any, Optional[float]]:
    """(parsed JSON or text, retry-after if this answer is worth retrying), or raises the
    answer's typed error."""
    if resp.status_code < 400:
        if resp.status_code == 204:
            return None, None
        ctype = resp.headers.get("content-type", "")
        return (resp.json() if ctype.startswith("application/json") else resp.content), None
    try:
        problem = resp.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"code": "unknown", "detail": resp.text[:200], "status": resp.status_code}
    retry_after = _retry_after(resp)
    raise errors.from_problem(resp.status_code, problem, retry_after)


def _wait_param(seconds: Optional[float]) -> Optional[str]:
    if seconds is None:
        return None
    return f"{max(0, min(int(seconds * 1000), MAX_LONG_POLL * 1000))}ms"


def _answer(outcome: str, by: str, shown: Optional[str], shown_hash: Optional[str],
            note: Optional[str]) -> dict[str, Any]:
    """A person's answer, the same object for a confirmation and an escalation (receipt format
    1.1): `outcome` `approved` or `declined`, `by` who answered, what they were shown (`shown`,
    or its SHA-256 `shown_hash`, at most one) and their `note`; the receipt keeps only hashes."""
    body: dict[str, Any] = {"outcome": outcome, "by": by}
    for name, value in (("shown", shown), ("shown_hash", shown_hash), ("note", note)):
        if value is not None:
            body[name] = value
    return body


def _final(kind: str, view: dict[str, Any]) -> Optional[FinalDecision]:
    """The final decision a confirmation or escalation view shows, or None while pending."""
    status = view.get("status")
    if status == "pending":
        return None
    if kind == CONFIRM:
        if status == "answered":
            return FinalDecision(view.get("decision") or DENY, view.get("reason") or "", view.get("answer_receipt_id"))
        return FinalDecision(DENY, "confirmation_expired", view.get("answer_receipt_id"))
    # `declined` also covers an approval that came after the authorization was revoked or
    # expired: the resolution receipt's `reason` says which.
    decision = "allow" if status == "approved" else DENY
    reason = {"approved": "approved", "declined": "declined"}.get(str(status), "escalation_expired")
    return FinalDecision(decision, reason, view.get("resolution_receipt_id"))


def _first_step(result: CheckResult) -> tuple[Optional[str], Optional[str]]:
    """(kind, id) of the human step a check opened, if any."""
    if result.decision == CONFIRM and result.confirmation:
        return CONFIRM, result.confirmation.nonce
    if result.decision == ESCALATE and result.escalation:
        return ESCALATE, result.escalation.id
    return None, None


class _Wait:
    """`wait_for_decision`'s state: which step to long-poll, until when, and its answer
    (`final`, None while it must ask again)."""

    def __init__(self, result: CheckResult, timeout: float):
        self.kind, self.ident = _first_step(result)
        self.deadline = time.monotonic() + timeout
        self.final: Optional[FinalDecision] = None
        if self.kind is None or self.ident is None:
            receipt_id = result.receipt.receipt_id if result.receipt else None
            self.final = FinalDecision(result.decision, result.reason, receipt_id)

    def request(self) -> _Request:
        left = max(0.0, min(self.deadline - time.monotonic(), MAX_LONG_POLL))
        path = f"/v1/confirmations/{self.ident}" if self.kind == CONFIRM else f"/v1/escalations/{self.ident}"
        return _Request("GET", path, {"wait": _wait_param(left)}, extra_timeout=left)

    def saw(self, view: dict[str, Any]) -> None:
        self.final = _final(str(self.kind), view)
        if self.final is None and time.monotonic() >= self.deadline:
            self.final = FinalDecision(DENY, "still_pending", None, pending=True)


class _Endpoints:
    """Every endpoint, once. `_call` sends a request and parses the answer: the sync client
    returns the value, the async one a coroutine of it."""

    def _call(self, req: _Request, parse: Callable[[Any], T]) -> T:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- Authorizations -----------------------------------------------------------------
    def create_authorization(self, subject: str, scopes: list[str], *, resources: Optional[list[str]] = None,
                             expires_at: Optional[str] = None, metadata: Any = None,
                             idempotency_key: Optional[str] = None) -> AuthorizationChange:
        """Record a user's approval (needs an `admin` key)."""
        body: dict[str, Any] = {"subject": subject, "scopes": scopes}
        if resources:
            body["resources"] = resources
        if expires_at:
            body["expires_at"] = expires_at
        if metadata is not None:
            body["metadata"] = metadata
        return self._call(_Request("POST", "/v1/authorizations", json=body, idempotency_key=idempotency_key),
                          AuthorizationChange.from_json)

    def get_authorization(self, authorization_id: str) -> Authorization:
        return self._call(_Request("GET", f"/v1/authorizations/{authorization_id}"), Authorization.from_json)

    def revoke_authorization(self, authorization_id: str, *,
                             idempotency_key: Optional[str] = None) -> AuthorizationChange:
        return self._call(_Request("POST", f"/v1/authorizations/{authorization_id}/revoke", json={},
                                   idempotency_key=idempotency_key), AuthorizationChange.from_json)

    # ---- Decisions ----------------------------------------------------------------------
    def check(self, authorization_id: str, scopes: list[str] | str, *, resource: Optional[str] = None,
              context: Any = None, idempotency_key: Optional[str] = None) -> CheckResult:
        """Ask before an agent action (needs a `check` key). `context` (what the agent is about
        to do) is echoed in a `confirm` answer, to show the user."""
        body: dict[str, Any] = {"authorization_id": authorization_id,
                                "scopes": [scopes] if isinstance(scopes, str) else scopes}
        if resource is not None:
            body["resource"] = resource
        if context is not None:
            body["context"] = context
        return self._call(_Request("POST", "/v1/check", json=body, idempotency_key=idempotency_key),
                          CheckResult.from_json)

    def answer_confirmation(self, nonce: str, outcome: str, by: str, *, shown: Optional[str] = None,
                            shown_hash: Optional[str] = None, note: Optional[str] = None,
                            idempotency_key: Optional[str] = None) -> Resolution:
        """The user's answer to a `confirm` decision (needs `admin`); see `_answer`."""
        return self._call(_Request("POST", f"/v1/confirmations/{nonce}", json=_answer(outcome, by, shown, shown_hash, note),
                                   idempotency_key=idempotency_key), Resolution.from_json)

    def resolve_escalation(self, escalation_id: str, outcome: str, by: str, *, shown: Optional[str] = None,
                           shown_hash: Optional[str] = None, note: Optional[str] = None,
                           idempotency_key: Optional[str] = None) -> Resolution:
        """An approver's answer to an escalation (needs `admin`); see `_answer`."""
        return self._call(_Request("POST", f"/v1/escalations/{escalation_id}/resolve",
                                   json=_answer(outcome, by, shown, shown_hash, note),
                                   idempotency_key=idempotency_key), Resolution.from_json)

    def get_confirmation(self, nonce: str, *, wait: Optional[float] = None) -> Confirmation:
        """A confirmation; with `wait` (seconds, at most 60) a long-poll that answers as soon as
        it is no longer pending."""
        return self._call(_Request("GET", f"/v1/confirmations/{nonce}", {"wait": _wait_param(wait)},
                                   extra_timeout=wait or 0), Confirmation.from_json)

    def get_escalation(self, escalation_id: str, *, wait: Optional[float] = None) -> Escalation:
        """An escalation; with `wait` a long-poll, as `get_confirmation`."""
        return self._call(_Request("GET", f"/v1/escalations/{escalation_id}", {"wait": _wait_param(wait)},
                                   extra_timeout=wait or 0), Escalation.from_json)

    # ---- Receipts, checkpoints and keys -------------------------------------------------
    def get_receipt(self, receipt_id: str) -> Receipt:
        """A receipt, signed or pending; a pending one says why in `pending_reason` when the
        server knows (`witness_quorum`: waiting for the witnesses' cosignatures)."""
        return self._call(_Request("GET", f"/v1/receipts/{receipt_id}", with_headers=True), _fetched_receipt)

    def get_checkpoint(self, workspace_id: str) -> Checkpoint:
        """The workspace log's newest signed checkpoint, with its cosignatures and, on a server
        that requires a witness quorum, where the quorum is (`witness`)."""
        return self._call(_Request("GET", f"/v1/workspaces/{workspace_id}/log/checkpoint"), Checkpoint.from_json)

    def keys(self, workspace_id: str) -> dict[str, Any]:
        """The workspace's public key set (no key needed): all a verifier needs."""
        return self._call(_Request("GET", f"/v1/workspaces/{workspace_id}/keys"), lambda v: v)

    def export_authorization(self, authorization_id: str) -> bytes:
        """The evidence bundle of an authorization's trail (JSON Lines), for `verify_bundle`."""
        return self._call(_Request("GET", f"/v1/authorizations/{authorization_id}/export"), bytes)

    # ---- Lists: every page, one after the other (an iterator on `Allowly`, an async
    # iterator on `AsyncAllowly`: `_pages` is theirs) ----------------------------------------
    def _pages(self, kind: str, params: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def list_authorizations(self, *, subject: Optional[str] = None, status: Optional[str] = None,
                            page_size: int = 100) -> Iterator[Authorization]:
        """Every authorization (filtered), page after page."""
        return self._pages("authorizations", {"subject": subject, "status": status, "limit": page_size})

    def trail(self, authorization_id: str, *, page_size: int = 100) -> Iterator[Receipt]:
        """An authorization's receipts in `seq` order, page after page."""
        return self._pages("receipts", {"authorization_id": authorization_id, "limit": page_size})

    def list_confirmations(self, *, status: Optional[str] = "pending", authorization_id: Optional[str] = None,
                           scope: Optional[str] = None, page_size: int = 100) -> Iterator[Confirmation]:
        """The approver inbox: confirmations (pending ones by default)."""
        return self._pages("confirmations", {"status": status, "authorization_id": authorization_id,
                                             "scope": scope, "limit": page_size})

    def list_escalations(self, *, status: Optional[str] = "pending", authorization_id: Optional[str] = None,
                         scope: Optional[str] = None, page_size: int = 100) -> Iterator[Escalation]:
        """The approver inbox: escalations (pending ones by default)."""
        return self._pages("escalations", {"status": status, "authorization_id": authorization_id,
                                           "scope": scope, "limit": page_size})


def _fetched_receipt(answer: tuple[Any, Any]) -> Receipt:
    value, headers = answer
    return Receipt.from_json(value, headers.get(PENDING_REASON_HEADER))


#: Why a receipt `GET /v1/receipts/{id}` answers is still pending (docs/witness.md).
PENDING_REASON_HEADER = "allowly-pending-reason"
#: `wait_for_receipt`: the first pause between reads, doubled up to the second.
_RECEIPT_POLL, _RECEIPT_POLL_MAX = 0.05, 1.0


class _ReceiptWait:
    """`wait_for_receipt`'s state: until when, and how long to pause before the next read."""

    def __init__(self, timeout: float, poll: float):
        self.deadline = time.monotonic() + timeout
        self.pause = poll

    def done(self, receipt: Receipt) -> bool:
        return receipt.signed or time.monotonic() >= self.deadline

    def next_pause(self) -> float:
        p = min(self.pause, max(0.0, self.deadline - time.monotonic()))
        self.pause = min(self.pause * 2, _RECEIPT_POLL_MAX)
        return p


_LISTS: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "authorizations": ("/v1/authorizations", Authorization.from_json),
    "receipts": ("/v1/receipts", Receipt.from_json),
    "confirmations": ("/v1/confirmations", Confirmation.from_json),
    "escalations": ("/v1/escalations", Escalation.from_json),
}


class Allowly(_Endpoints):
    """Synchronous client.

    >>> client = Allowly("alw_…", base_url="http://127.0.0.1:8080")
    >>> result = client.check(authorization_id, "email.send", resource="inbox:42")
    """

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, *, timeout: float = 10.0,
                 max_retries: int = 3, backoff: float = 0.2, max_backoff: float = 10.0,
                 http: Optional[httpx.Client] = None):
        self._timeout = timeout
        self._retry = _Retry(max_retries, backoff, max_backoff)
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout,
                                          headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Allowly":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, req: _Request, parse: Callable[[Any], T]) -> T:
        attempt = 0
        while True:
            try:
                resp = self._http.request(req.method, req.path, params=req.query(), json=req.json,
                                          headers=req.headers(), timeout=self._timeout + req.extra_timeout)
                value, _ = _outcome(resp)
                return parse((value, resp.headers) if req.with_headers else value)
            except (errors.ApiError, httpx.TransportError) as e:
                delay = self._retry.after(attempt, e)
            time.sleep(delay)
            attempt += 1

    def _pages(self, kind: str, params: dict[str, Any]) -> Iterator[Any]:
        path, parse = _LISTS[kind]
        params = dict(params)
        while True:
            page = self._call(_Request("GET", path, params), lambda v: v)
            for item in page["data"]:
                yield parse(item)
            if not page.get("has_more") or not page.get("next_cursor"):
                return
            params["starting_after"] = page["next_cursor"]

    def wait_for_decision(self, result: CheckResult, *, timeout: float = 300.0) -> FinalDecision:
        """The final decision of a check: at once for allow/deny; for confirm and escalate,
        long-polls until a human answered (or the step expired), or `timeout` seconds passed
        (then `pending=True`: do not act). Reads the confirmation or escalation: the key needs
        the `read` role (an agent's `check`-only key may not; give the waiting side a read key)."""
        wait = _Wait(result, timeout)
        while wait.final is None:
            wait.saw(self._call(wait.request(), lambda v: v))
        return wait.final

    def wait_for_receipt(self, receipt_id: str, *, timeout: float = 30.0,
                         poll_interval: float = _RECEIPT_POLL) -> Receipt:
        """Reads the receipt until it is signed (it then verifies alone, offline), or `timeout`
        seconds passed: then the last pending read is returned (`signed` False; its
        `pending_reason` says `witness_quorum` if it waits for the server's witness quorum,
        docs/witness.md). Pauses `poll_interval` between reads, doubling up to 1 s."""
        wait = _ReceiptWait(timeout, poll_interval)
        while True:
            receipt = self.get_receipt(receipt_id)
            if wait.done(receipt):
                return receipt
            time.sleep(wait.next_pause())


class AsyncAllowly(_Endpoints):
    """asyncio client: the same methods as `Allowly`, awaited; lists are async iterators."""

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, *, timeout: float = 10.0,
                 max_retries: int = 3, backoff: float = 0.2, max_backoff: float = 10.0,
                 http: Optional[httpx.AsyncClient] = None):
        self._timeout = timeout
        self._retry = _Retry(max_retries, backoff, max_backoff)
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                               headers={"Authorization": f"Bearer {api_key}"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncAllowly":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _call(self, req: _Request, parse: Callable[[Any], T]) -> T:  # type: ignore[override]
        attempt = 0
        while True:
            try:
                resp = await self._http.request(req.method, req.path, params=req.query(), json=req.json,
                                                headers=req.headers(), timeout=self._timeout + req.extra_timeout)
                value, _ = _outcome(resp)
                return parse((value, resp.headers) if req.with_headers else value)
            except (errors.ApiError, httpx.TransportError) as e:
                delay = self._retry.after(attempt, e)
            await asyncio.sleep(delay)
            attempt += 1

    async def _pages(self, kind: str, params: dict[str, Any]) -> AsyncIterator[Any]:
        path, parse = _LISTS[kind]
        params = dict(params)
        while True:
            page = await self._call(_Request("GET", path, params), lambda v: v)
            for item in page["data"]:
                yield parse(item)
            if not page.get("has_more") or not page.get("next_cursor"):
                return
            params["starting_after"] = page["next_cursor"]

    async def wait_for_decision(self, result: CheckResult, *, timeout: float = 300.0) -> FinalDecision:
        """As `Allowly.wait_for_decision`."""
        wait = _Wait(result, timeout)
        while wait.final is None:
            wait.saw(await self._call(wait.request(), lambda v: v))
        return wait.final

    async def wait_for_receipt(self, receipt_id: str, *, timeout: float = 30.0,
                               poll_interval: float = _RECEIPT_POLL) -> Receipt:
        """As `Allowly.wait_for_receipt`."""
        wait = _ReceiptWait(timeout, poll_interval)
        while True:
            receipt = await self.get_receipt(receipt_id)
            if wait.done(receipt):
                return receipt
            await asyncio.sleep(wait.next_pause())
