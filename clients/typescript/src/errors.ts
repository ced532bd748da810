/**
 * Typed errors: one class per problem `code` the API answers with (RFC 9457 problem documents,
 * `application/problem+json`). Catch a family (`NotFound`, `Conflict`, `Unavailable`, …) with
 * `instanceof`, or one code. Every error carries the problem's `status`, `code`, `detail`,
 * `requestId` and, for a refused step the trail records, the `receipt`. The list of codes is
 * checked against docs/openapi.json by the SDK's tests.
 */

/** Anything this SDK throws. */
export class AllowlyError extends Error {
  constructor(message?: string, options?: ErrorOptions) {
    super(message, options);
    // The class's own name (`ConfirmationUsed`, `NotFound`, …), also for the generated ones.
    this.name = new.target.name;
  }
}

/**
 * The server could not be reached, or the connection broke before an answer (after the
 * retries). A POST may or may not have taken effect: repeat it with the same `idempotencyKey`
 * to find out without a second effect.
 */
export class TransportError extends AllowlyError {}

/** Offline verification could not run (unusable input: not a receipt, a broken key set). */
export class VerificationError extends AllowlyError {}

/** A problem document as the API sends it. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  code?: string;
  detail?: string;
  request_id?: string;
  receipt?: Record<string, unknown> | null;
  [member: string]: unknown;
}

/** An answer with a problem document. `code` is stable; `detail` is for people. */
export class ApiError extends AllowlyError {
  readonly status: number;
  readonly problem: Problem;
  readonly code: string;
  readonly detail: string;
  readonly requestId: string | undefined;
  /** The receipt a refused step left in the trail (used or expired nonce, expired escalation). */
  readonly receipt: Record<string, unknown> | undefined;
  /** Seconds, from `Retry-After` (429 and passing 503s). */
  readonly retryAfter: number | undefined;

  constructor(status: number, problem: Problem, retryAfter?: number) {
    const code = typeof problem.code === "string" ? problem.code : "unknown";
    const detail = typeof problem.detail === "string" ? problem.detail : "";
    const requestId = typeof problem.request_id === "string" ? problem.request_id : undefined;
    super(`${status} ${code}: ${detail} (request ${requestId ?? "-"})`);
    this.status = status;
    this.problem = problem;
    this.code = code;
    this.detail = detail;
    this.requestId = requestId;
    this.receipt = problem.receipt ?? undefined;
    this.retryAfter = retryAfter;
  }
}

// Families, by what a caller does about them.
/** The request is wrong; sending it again will not help (400, 405, 408, 413, 415, 422). */
export class BadRequest extends ApiError {}
/** The API key is missing, unknown, revoked (401) or lacks the role (403). */
export class AuthError extends ApiError {}
/** No such object in this workspace (another workspace's objects are not found either). */
export class NotFound extends ApiError {}
/** The object's state forbids the step (409). */
export class Conflict extends ApiError {}
/** Too late: the confirmation or escalation expired (410); recorded as deny. */
export class Gone extends ApiError {}
/**
 * Back pressure or a fault (429, 503). Those with `retryAfter` pass by themselves and are
 * retried by the client; those without (a diverged log) need an operator.
 */
export class Unavailable extends ApiError {}
/** A fault of the server (500); details are in its log under `requestId`. */
export class ServerError extends ApiError {}

type Family = typeof ApiError;

/** Every problem code this SDK knows, with its family (the Python SDK's table, by design). */
const CODES: ReadonlyArray<readonly [string, Family]> = [
  ["not_found", NotFound],
  ["method_not_allowed", BadRequest],
  ["unauthenticated", AuthError],
  ["forbidden", AuthError],
  ["unsupported_media_type", BadRequest],
  ["body_too_large", BadRequest],
  ["malformed_json", BadRequest],
  ["unknown_field", BadRequest],
  ["invalid_request", BadRequest],
  ["destination_not_allowed", BadRequest],
  ["idempotency_key_reused", BadRequest],
  ["request_timeout", BadRequest],
  ["conflict", Conflict],
  ["webhook_not_found", NotFound],
  ["webhook_disabled", Conflict],
  ["delivery_in_progress", Conflict],
  ["confirmation_used", Conflict],
  ["escalation_already_resolved", Conflict],
  ["confirmation_expired", Gone],
  ["escalation_expired", Gone],
  ["rate_limited", Unavailable],
  ["overloaded", Unavailable],
  ["too_many_connections", Unavailable],
  ["too_many_long_polls", Unavailable],
  ["signer_unavailable", Unavailable],
  ["signer_slow", Unavailable],
  ["shutting_down", Unavailable],
  ["storage_full", Unavailable],
  ["storage_failed", Unavailable],
  ["storage_unavailable", Unavailable],
  ["storage_slow", Unavailable],
  ["commit_timeout", Unavailable],
  ["read_timeout", Unavailable],
  ["signer_storage_failed", Unavailable],
  ["signer_token_unavailable", Unavailable],
  ["signing_backlog", Unavailable],
  ["workspace_log_diverged", Unavailable],
  ["workspace_log_behind_signer", Unavailable],
  ["workspace_log_catching_up", Unavailable],
  ["workspace_key_store_not_open", Unavailable],
  ["workspace_owned_elsewhere", Unavailable],
  ["backup_failed", ServerError],
  ["backup_not_supported", ServerError],
  ["storage_error", ServerError],
  ["signer_error", ServerError],
  ["internal_error", ServerError],
];

function camel(code: string): string {
  return code.replace(/(^|_)([a-z])/g, (_m, _u, c: string) => c.toUpperCase());
}

/**
 * Problem code → its class: a subclass of its family named after the code in CamelCase
 * (`confirmation_used` → `ConfirmationUsed`, an instance of `Conflict`), so that
 * `err instanceof errors.byCode.confirmation_used` and `err.name === "ConfirmationUsed"` work.
 */
export const byCode: Readonly<Record<string, Family>> = Object.freeze(
  Object.fromEntries(
    CODES.map(([code, family]) => {
      const name = camel(code);
      // A computed member name names the class: `cls.name` is `name`.
      const cls = { [name]: class extends family {} }[name] as Family;
      return [code, cls];
    }),
  ),
);

function family(status: number): Family {
  if (status === 401 || status === 403) return AuthError;
  if (status === 404) return NotFound;
  if (status === 409) return Conflict;
  if (status === 410) return Gone;
  if (status === 429 || status === 503) return Unavailable;
  if (status >= 500) return ServerError;
  return BadRequest;
}

/** The typed error of a problem answer (an unknown code gets its status's family). */
export function fromProblem(status: number, problem: Problem, retryAfter?: number): ApiError {
  const code = typeof problem.code === "string" ? problem.code : "";
  const cls = Object.hasOwn(byCode, code) ? byCode[code]! : family(status);
  return new cls(status, problem, retryAfter);
}
