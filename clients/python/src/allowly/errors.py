"""Typed errors: one class per problem `code` the API answers with (RFC 9457 problem
documents, `application/problem+json`).

Catch a family (`NotFound`, `Conflict`, `Unavailable`, ...) or one code
(`ConfirmationUsed`, `SignerUnavailable`, ...). Every class carries the problem's `status`,
`code`, `detail`, `request_id` and, for a refused step the trail records, the `receipt`.
The list of codes is checked against docs/openapi.json by the SDK's tests.
"""

from __future__ import annotations

from typing import Any


class AllowlyError(Exception):
    """Anything this SDK raises."""


class TransportError(AllowlyError):
    """The server could not be reached, or the connection broke before an answer (after the
    retries). A POST may or may not have taken effect: repeat it with the same
    `idempotency_key` to find out without a second effect."""


class VerificationError(AllowlyError):
    """Offline verification could not run (unusable input: not a receipt, no keys)."""


class ApiError(AllowlyError):
    """An answer with a problem document. `code` is stable; `detail` is for people."""

    #: The problem code this class stands for (`None`: any code not known to this SDK).
    code_name: str | None = None

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None = None):
        self.status = status
        self.problem = problem
        self.code: str = str(problem.get("code", "unknown"))
        self.detail: str = str(problem.get("detail", ""))
        self.title: str = str(problem.get("title", ""))
        self.request_id: str | None = problem.get("request_id")
        #: The receipt a refused step left in the trail (used or expired nonce, expired escalation).
        self.receipt: dict[str, Any] | None = problem.get("receipt")
        #: Seconds, from `Retry-After` (429 and passing 503s).
        self.retry_after = retry_after
        super().__init__(f"{status} {self.code}: {self.detail} (request {self.request_id})")


# Families, by what a caller does about them.
class BadRequest(ApiError):
    """The request is wrong; sending it again will not help (400, 413, 415, 422)."""


class AuthError(ApiError):
    """The API key is missing, unknown, revoked (401) or lacks the role (403)."""


class NotFound(ApiError):
    """No such object in this workspace (another workspace's objects are not found either)."""


class Conflict(ApiError):
    """The object's state forbids the step (409)."""


class Gone(ApiError):
    """Too late: the confirmation or escalation expired (410); recorded as deny."""


class Unavailable(ApiError):
    """Back pressure or a fault (429, 503). Those with `retry_after` pass by themselves and are
    retried by the client; those without (a diverged log) need an operator."""


class ServerError(ApiError):
    """A fault of the server (500); details are in its log under `request_id`."""


def _code(name: str, base: type[ApiError], code: str, doc: str) -> type[ApiError]:
    cls = type(name, (base,), {"__doc__": doc, "code_name": code, "__module__": __name__})
    return cls


# One class per code. Names are the code in CamelCase.
NotFoundError = NotFound  # alias: `not_found` itself
MethodNotAllowed = _code("MethodNotAllowed", BadRequest, "method_not_allowed", "Known path, other method.")
Unauthenticated = _code("Unauthenticated", AuthError, "unauthenticated", "Missing, unknown or revoked API key.")
Forbidden = _code("Forbidden", AuthError, "forbidden", "The key lacks the role the endpoint needs.")
UnsupportedMediaType = _code("UnsupportedMediaType", BadRequest, "unsupported_media_type", "Body not JSON.")
BodyTooLarge = _code("BodyTooLarge", BadRequest, "body_too_large", "Body over the server's limit.")
MalformedJson = _code("MalformedJson", BadRequest, "malformed_json", "The body is not JSON.")
UnknownField = _code("UnknownField", BadRequest, "unknown_field", "A field the endpoint does not know.")
InvalidRequest = _code("InvalidRequest", BadRequest, "invalid_request", "A field or parameter is wrong.")
DestinationNotAllowed = _code("DestinationNotAllowed", BadRequest, "destination_not_allowed",
                              "A webhook URL on a non-public address.")
IdempotencyKeyReused = _code("IdempotencyKeyReused", BadRequest, "idempotency_key_reused",
                             "The Idempotency-Key was used with another request.")
RequestTimeout = _code("RequestTimeout", BadRequest, "request_timeout", "The request arrived too slowly.")
ConflictError = _code("ConflictError", Conflict, "conflict", "The object's state forbids the change.")
WebhookNotFound = _code("WebhookNotFound", NotFound, "webhook_not_found", "The delivery's endpoint is gone.")
WebhookDisabled = _code("WebhookDisabled", Conflict, "webhook_disabled", "The endpoint is disabled.")
DeliveryInProgress = _code("DeliveryInProgress", Conflict, "delivery_in_progress", "Still being delivered.")
ConfirmationUsed = _code("ConfirmationUsed", Conflict, "confirmation_used", "Answered once already.")
EscalationAlreadyResolved = _code("EscalationAlreadyResolved", Conflict, "escalation_already_resolved",
                                  "Resolved once already.")
ConfirmationExpired = _code("ConfirmationExpired", Gone, "confirmation_expired", "Too late; recorded as deny.")
EscalationExpired = _code("EscalationExpired", Gone, "escalation_expired", "Too late; recorded as deny.")
RateLimited = _code("RateLimited", Unavailable, "rate_limited", "The API key is over its rate.")
Overloaded = _code("Overloaded", Unavailable, "overloaded", "The workspace's queue is full.")
TooManyConnections = _code("TooManyConnections", Unavailable, "too_many_connections",
                           "Too many connections from this address.")
TooManyLongPolls = _code("TooManyLongPolls", Unavailable, "too_many_long_polls",
                         "Too many long-polls are waiting on the server.")
SignerUnavailable = _code("SignerUnavailable", Unavailable, "signer_unavailable",
                          "The signer does not answer: decisions fail closed.")
SignerSlow = _code("SignerSlow", Unavailable, "signer_slow",
                   "The signer answers but signs too slowly: decisions fail closed.")
ShuttingDown = _code("ShuttingDown", Unavailable, "shutting_down", "The server is stopping.")
StorageFull = _code("StorageFull", Unavailable, "storage_full", "The data volume is full.")
StorageFailed = _code("StorageFailed", Unavailable, "storage_failed", "The data volume failed a write.")
StorageUnavailable = _code("StorageUnavailable", Unavailable, "storage_unavailable",
                           "The database (PostgreSQL mode) cannot be reached.")
StorageSlow = _code("StorageSlow", Unavailable, "storage_slow", "Synced writes are too slow.")
CommitTimeout = _code("CommitTimeout", Unavailable, "commit_timeout",
                      "Outcome unknown: retry with the same Idempotency-Key.")
ReadTimeout = _code("ReadTimeout", Unavailable, "read_timeout", "The data volume did not answer a read in time.")
SignerStorageFailed = _code("SignerStorageFailed", Unavailable, "signer_storage_failed",
                            "The signer cannot write its journal.")
SignerTokenUnavailable = _code("SignerTokenUnavailable", Unavailable, "signer_token_unavailable",
                               "The signer's PKCS#11 token failed: nothing was signed, retry later.")
SigningBacklog = _code("SigningBacklog", Unavailable, "signing_backlog", "Signing is too far behind.")
WorkspaceLogDiverged = _code("WorkspaceLogDiverged", Unavailable, "workspace_log_diverged",
                             "The workspace's log disagrees with the signer's: an operator must resync.")
WorkspaceLogBehindSigner = _code("WorkspaceLogBehindSigner", Unavailable, "workspace_log_behind_signer",
                                 "The store is older than the signer's state: restore a newer backup.")
WorkspaceLogCatchingUp = _code("WorkspaceLogCatchingUp", Unavailable, "workspace_log_catching_up",
                               "The signer is being caught up after a restore.")
WorkspaceKeyStoreNotOpen = _code("WorkspaceKeyStoreNotOpen", Unavailable, "workspace_key_store_not_open",
                                 "The workspace's key is in a key store the signer does not open: an operator "
                                 "must restart the signer with it.")
WorkspaceOwnedElsewhere = _code("WorkspaceOwnedElsewhere", Unavailable, "workspace_owned_elsewhere",
                                "Another node of the cluster owns the workspace and could not be reached: retry.")
BackupFailed = _code("BackupFailed", ServerError, "backup_failed", "The backup could not be made.")
BackupNotSupported = _code("BackupNotSupported", ServerError, "backup_not_supported",
                           "The data is in PostgreSQL: back it up with the database's own tools.")
StorageError = _code("StorageError", ServerError, "storage_error", "The store failed.")
SignerError = _code("SignerError", ServerError, "signer_error", "The signer answered with an error.")
InternalError = _code("InternalError", ServerError, "internal_error", "A fault of the server.")

#: Problem code -> its class.
BY_CODE: dict[str, type[ApiError]] = {
    cls.code_name: cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, ApiError) and cls.code_name
}
BY_CODE["not_found"] = NotFound


def _family(status: int) -> type[ApiError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status == 410:
        return Gone
    if status in (429, 503):
        return Unavailable
    if status >= 500:
        return ServerError
    return BadRequest


def from_problem(status: int, problem: dict[str, Any], retry_after: float | None = None) -> ApiError:
    """The typed error of a problem answer (an unknown code gets its status's family)."""
    cls = BY_CODE.get(str(problem.get("code")), _family(status))
    return cls(status, problem, retry_after)
