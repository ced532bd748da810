/**
 * The client, on the platform's `fetch`. What it does on every request:
 *
 * - POSTs carry an `Idempotency-Key` (a fresh UUID per call unless one is given), the same on
 *   every retry, so a retry after a lost answer gets the first answer, never a second effect;
 * - 429 and 503 answers that carry `Retry-After` (they pass by themselves) and connection
 *   errors are retried up to `maxRetries` times, waiting `Retry-After` or an exponential
 *   backoff with jitter, whichever is longer; a `Retry-After` longer than `maxBackoffMs` is not
 *   waited for but thrown (the caller decides), and a 503 without it (a diverged log) is thrown
 *   at once;
 * - a problem answer becomes the typed error of its `code` (`errors`).
 */

import { randomUUID } from "node:crypto";

import { ApiError, Problem, TransportError, fromProblem } from "./errors.js";
import {
  Authorization,
  AuthorizationChange,
  CONFIRM,
  CheckResult,
  Checkpoint,
  Confirmation,
  DENY,
  ESCALATE,
  Escalation,
  FetchedReceipt,
  FinalDecision,
  KeySetDoc,
  Outcome,
  Page,
  Receipt,
  Resolution,
} from "./models.js";

export const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
/** Longest wait of one long-poll the server accepts by default (ms). */
export const MAX_LONG_POLL_MS = 60_000;

export interface ClientOptions {
  baseUrl?: string;
  /** Per request, beyond a long-poll's own wait (default 10 s). */
  timeoutMs?: number;
  /** Retries of a passing 429/503 or a connection error (default 3). */
  maxRetries?: number;
  /** First backoff (default 200 ms), doubled per attempt, with jitter. */
  backoffMs?: number;
  /** Longest wait before a retry (default 10 s). */
  maxBackoffMs?: number;
  /** Another `fetch` (tests, proxies). */
  fetch?: typeof fetch;
}

/** A person's answer, the same object for a confirmation and an escalation (format 1.1). */
export interface Answer {
  outcome: Outcome;
  /** Who answered, as the app knows them. */
  by: string;
  /** Exactly what they were shown; only its SHA-256 goes into the receipt. */
  shown?: string;
  /** Or that SHA-256, computed by the app (at most one of the two). */
  shown_hash?: string;
  /** What they wrote with their answer; only its SHA-256 goes into the receipt. */
  note?: string;
}

export interface PostOptions {
  /** Sent as `Idempotency-Key`; a fresh UUID per call if not given. */
  idempotencyKey?: string;
}

export interface CheckOptions extends PostOptions {
  resource?: string;
  /** What the agent is about to do: echoed in a `confirm` answer, to show the user. */
  context?: unknown;
}

export interface GrantOptions extends PostOptions {
  resources?: string[];
  expiresAt?: string;
  metadata?: unknown;
}

export interface InboxFilter {
  /** Default `pending`: the approver inbox. `null` for every status. */
  status?: string | null;
  authorizationId?: string;
  scope?: string;
  pageSize?: number;
}

type Query = Record<string, string | number | null | undefined>;

interface Request {
  method: "GET" | "POST" | "PUT";
  path: string;
  query?: Query;
  body?: unknown;
  idempotencyKey?: string;
  /** Extra time for the answer (a long-poll's wait). */
  extraTimeoutMs?: number;
  /** The answer as bytes (exports), not JSON. */
  raw?: boolean;
  /** Sees the headers of a successful answer. */
  onHeaders?: (headers: Headers) => void;
}

/** Why a receipt `GET /v1/receipts/{id}` answers is still pending (docs/witness.md). */
export const PENDING_REASON_HEADER = "allowly-pending-reason";
/** `waitForReceipt`: the first pause between reads (ms), doubled up to `RECEIPT_POLL_MAX_MS`. */
const RECEIPT_POLL_MS = 50;
const RECEIPT_POLL_MAX_MS = 1_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function retryAfterSeconds(resp: Response): number | undefined {
  const v = resp.headers.get("retry-after");
  if (v === null || !/^\d+(\.\d+)?$/.test(v.trim())) return undefined;
  return Number(v);
}

function waitParam(ms: number | undefined): string | undefined {
  if (ms === undefined) return undefined;
  return `${Math.max(0, Math.min(Math.floor(ms), MAX_LONG_POLL_MS))}ms`;
}

/** A final decision as `waitForDecision` reports it. */
function final(decision: FinalDecision["decision"], reason: string, receiptId: string | null, pending = false) {
  return { decision, reason, receiptId, pending, allowed: decision === "allow" && !pending };
}

/** What a confirmation and an escalation have in common, as `waitForDecision` reads them. */
type HumanStep = Pick<Confirmation, "decision" | "reason" | "answer_receipt_id"> &
  Pick<Escalation, "resolution_receipt_id"> & { status?: string };

/** The final decision a confirmation or escalation shows, or null while it is pending. */
function finalOf(kind: "confirm" | "escalate", view: HumanStep): FinalDecision | null {
  if (view.status === "pending") return null;
  if (kind === CONFIRM) {
    if (view.status === "answered") {
      return final(view.decision ?? DENY, view.reason ?? "", view.answer_receipt_id ?? null);
    }
    return final(DENY, "confirmation_expired", view.answer_receipt_id ?? null);
  }
  // `declined` also covers an approval that came after the authorization was revoked or
  // expired: the resolution receipt's `reason` says which.
  if (view.status === "approved") return final("allow", "approved", view.resolution_receipt_id ?? null);
  const reason = view.status === "declined" ? "declined" : "escalation_expired";
  return final(DENY, reason, view.resolution_receipt_id ?? null);
}

export class Allowly {
  readonly baseUrl: string;
  private readonly apiKey: string;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(apiKey: string, options: ClientOptions = {}) {
    this.apiKey = apiKey;
    this.baseUrl = (options.baseUrl ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.maxRetries = options.maxRetries ?? 3;
    this.backoffMs = options.backoffMs ?? 200;
    this.maxBackoffMs = options.maxBackoffMs ?? 10_000;
    this.fetchImpl = options.fetch ?? globalThis.fetch;
  }

  // ---- Authorizations ----------------------------------------------------------------------

  /** Record a user's approval (needs an `admin` key). */
  createAuthorization(subject: string, scopes: string[], options: GrantOptions = {}): Promise<AuthorizationChange> {
    const body: Record<string, unknown> = { subject, scopes };
    if (options.resources?.length) body.resources = options.resources;
    if (options.expiresAt) body.expires_at = options.expiresAt;
    if (options.metadata !== undefined) body.metadata = options.metadata;
    return this.call({ method: "POST", path: "/v1/authorizations", body, idempotencyKey: options.idempotencyKey });
  }

  getAuthorization(authorizationId: string): Promise<Authorization> {
    return this.call({ method: "GET", path: `/v1/authorizations/${enc(authorizationId)}` });
  }

  revokeAuthorization(authorizationId: string, options: PostOptions = {}): Promise<AuthorizationChange> {
    return this.call({
      method: "POST",
      path: `/v1/authorizations/${enc(authorizationId)}/revoke`,
      body: {},
      idempotencyKey: options.idempotencyKey,
    });
  }

  // ---- Decisions ---------------------------------------------------------------------------

  /** Ask before an agent action (needs a `check` key). */
  check(authorizationId: string, scopes: string | string[], options: CheckOptions = {}): Promise<CheckResult> {
    const body: Record<string, unknown> = {
      authorization_id: authorizationId,
      scopes: typeof scopes === "string" ? [scopes] : scopes,
    };
    if (options.resource !== undefined) body.resource = options.resource;
    if (options.context !== undefined) body.context = options.context;
    return this.call({ method: "POST", path: "/v1/check", body, idempotencyKey: options.idempotencyKey });
  }

  /** The user's answer to a `confirm` decision (needs `admin`). */
  answerConfirmation(nonce: string, answer: Answer, options: PostOptions = {}): Promise<Resolution> {
    return this.call({
      method: "POST",
      path: `/v1/confirmations/${enc(nonce)}`,
      body: answer,
      idempotencyKey: options.idempotencyKey,
    });
  }

  /** An approver's answer to an escalation (needs `admin`). */
  resolveEscalation(escalationId: string, answer: Answer, options: PostOptions = {}): Promise<Resolution> {
    return this.call({
      method: "POST",
      path: `/v1/escalations/${enc(escalationId)}/resolve`,
      body: answer,
      idempotencyKey: options.idempotencyKey,
    });
  }

  /** A confirmation; with `waitMs` a long-poll that answers as soon as it is no longer pending. */
  getConfirmation(nonce: string, options: { waitMs?: number } = {}): Promise<Confirmation> {
    return this.call({
      method: "GET",
      path: `/v1/confirmations/${enc(nonce)}`,
      query: { wait: waitParam(options.waitMs) },
      extraTimeoutMs: options.waitMs,
    });
  }

  /** An escalation; with `waitMs` a long-poll, as `getConfirmation`. */
  getEscalation(escalationId: string, options: { waitMs?: number } = {}): Promise<Escalation> {
    return this.call({
      method: "GET",
      path: `/v1/escalations/${enc(escalationId)}`,
      query: { wait: waitParam(options.waitMs) },
      extraTimeoutMs: options.waitMs,
    });
  }

  /**
   * The final decision of a check: at once for allow/deny; for confirm and escalate, long-polls
   * until a person answered (or the step expired), or `timeoutMs` passed (then `pending`: do not
   * act). Reads the confirmation or escalation: the key needs the `read` role.
   */
  async waitForDecision(result: CheckResult, options: { timeoutMs?: number } = {}): Promise<FinalDecision> {
    let kind: "confirm" | "escalate" | undefined;
    let path = "";
    if (result.decision === CONFIRM && result.confirmation) {
      kind = CONFIRM;
      path = `/v1/confirmations/${enc(result.confirmation.nonce)}`;
    } else if (result.decision === ESCALATE && result.escalation) {
      kind = ESCALATE;
      path = `/v1/escalations/${enc(result.escalation.id)}`;
    }
    if (kind === undefined) {
      return final(result.decision, result.reason, result.receipt?.receipt_id ?? result.receipt?.body.id ?? null);
    }
    const deadline = Date.now() + (options.timeoutMs ?? 300_000);
    for (;;) {
      const left = Math.max(0, Math.min(deadline - Date.now(), MAX_LONG_POLL_MS));
      const view = await this.call<HumanStep>({
        method: "GET",
        path,
        query: { wait: waitParam(left) },
        extraTimeoutMs: left,
      });
      const answer = finalOf(kind, view);
      if (answer) return answer;
      if (Date.now() >= deadline) return final(DENY, "still_pending", null, true);
    }
  }

  // ---- Receipts, checkpoints and keys ------------------------------------------------------

  /**
   * A receipt, signed or pending; a pending one says why in `pending_reason` when the server
   * knows (`witness_quorum`: waiting for the witnesses' cosignatures).
   */
  async getReceipt(receiptId: string): Promise<FetchedReceipt> {
    const seen: { reason: string | null } = { reason: null };
    const receipt = await this.call<Receipt>({
      method: "GET",
      path: `/v1/receipts/${enc(receiptId)}`,
      onHeaders: (h) => {
        seen.reason = h.get(PENDING_REASON_HEADER);
      },
    });
    if (seen.reason !== null && receipt.status === "pending") {
      // Not enumerable: kept out of the document, which verifies as the server sent it.
      Object.defineProperty(receipt, "pending_reason", { value: seen.reason, enumerable: false });
    }
    return receipt;
  }

  /**
   * Reads the receipt until it is signed (it then verifies alone, offline), or `timeoutMs`
   * passed (default 30 s): then the last pending read is returned (`status` `pending`; its
   * `pending_reason` says `witness_quorum` if it waits for the server's witness quorum,
   * docs/witness.md). Pauses `pollIntervalMs` (default 50) between reads, doubling up to 1 s.
   */
  async waitForReceipt(receiptId: string, options: { timeoutMs?: number; pollIntervalMs?: number } = {}): Promise<FetchedReceipt> {
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    let pause = options.pollIntervalMs ?? RECEIPT_POLL_MS;
    for (;;) {
      const receipt = await this.getReceipt(receiptId);
      if (receipt.status === "signed" || Date.now() >= deadline) return receipt;
      await sleep(Math.min(pause, Math.max(0, deadline - Date.now())));
      pause = Math.min(pause * 2, RECEIPT_POLL_MAX_MS);
    }
  }

  /**
   * The workspace log's newest signed checkpoint, with its cosignatures and, on a server that
   * requires a witness quorum, where the quorum is (`witness`).
   */
  getCheckpoint(workspaceId: string): Promise<Checkpoint> {
    return this.call({ method: "GET", path: `/v1/workspaces/${enc(workspaceId)}/log/checkpoint` });
  }

  /** The workspace's public key set (no key needed): all a verifier needs. */
  keys(workspaceId: string): Promise<KeySetDoc> {
    return this.call({ method: "GET", path: `/v1/workspaces/${enc(workspaceId)}/keys` });
  }

  /** The evidence bundle of an authorization's trail (JSON Lines), for `verifyBundle`. */
  exportAuthorization(authorizationId: string): Promise<Uint8Array> {
    return this.call({ method: "GET", path: `/v1/authorizations/${enc(authorizationId)}/export`, raw: true });
  }

  // ---- Lists: every page, one after the other ----------------------------------------------

  /** Every authorization (filtered), page after page. */
  listAuthorizations(filter: { subject?: string; status?: string; pageSize?: number } = {}): AsyncIterable<Authorization> {
    return this.pages("/v1/authorizations", { subject: filter.subject, status: filter.status, limit: filter.pageSize });
  }

  /** An authorization's receipts in `seq` order, page after page. */
  trail(authorizationId: string, options: { pageSize?: number } = {}): AsyncIterable<Receipt> {
    return this.pages("/v1/receipts", { authorization_id: authorizationId, limit: options.pageSize });
  }

  /** The approver inbox: confirmations (pending ones unless `status` says otherwise). */
  listConfirmations(filter: InboxFilter = {}): AsyncIterable<Confirmation> {
    return this.pages("/v1/confirmations", inboxQuery(filter));
  }

  /** The approver inbox: escalations (pending ones unless `status` says otherwise). */
  listEscalations(filter: InboxFilter = {}): AsyncIterable<Escalation> {
    return this.pages("/v1/escalations", inboxQuery(filter));
  }

  private async *pages<T>(path: string, query: Query): AsyncGenerator<T> {
    const q = { ...query };
    for (;;) {
      const page = await this.call<Page<T>>({ method: "GET", path, query: q });
      yield* page.data;
      if (!page.has_more || !page.next_cursor) return;
      q.starting_after = page.next_cursor;
    }
  }

  // ---- Sending -----------------------------------------------------------------------------

  private async call<T>(req: Request): Promise<T> {
    const url = new URL(this.baseUrl + req.path);
    for (const [k, v] of Object.entries(req.query ?? {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = { accept: "application/json", authorization: `Bearer ${this.apiKey}` };
    if (req.method !== "GET") {
      headers["content-type"] = "application/json";
      // One key for the call, resent by every retry.
      if (req.method === "POST") headers["idempotency-key"] = req.idempotencyKey ?? randomUUID();
    }
    const body = req.body === undefined ? undefined : JSON.stringify(req.body);
    for (let attempt = 0; ; attempt++) {
      let resp: Response;
      try {
        resp = await this.fetchImpl(url, {
          method: req.method,
          headers,
          body,
          signal: AbortSignal.timeout(this.timeoutMs + (req.extraTimeoutMs ?? 0)),
        });
      } catch (e) {
        if (attempt >= this.maxRetries) {
          throw new TransportError(`${req.method} ${req.path}: ${(e as Error).message}`, { cause: e });
        }
        await sleep(this.delay(attempt, undefined));
        continue;
      }
      if (resp.status < 400) {
        req.onHeaders?.(resp.headers);
        return (await this.read(resp, req.raw)) as T;
      }
      const err = await this.problem(resp);
      const retryable =
        (err.status === 429 || err.status === 503) && err.retryAfter !== undefined && err.retryAfter * 1000 <= this.maxBackoffMs;
      if (!retryable || attempt >= this.maxRetries) throw err;
      await sleep(this.delay(attempt, err.retryAfter));
    }
  }

  /** Exponential backoff with jitter, and never less than the server's `Retry-After`. */
  private delay(attempt: number, retryAfter: number | undefined): number {
    const exp = this.backoffMs * 2 ** attempt;
    const jittered = Math.min(exp / 2 + Math.random() * (exp / 2), this.maxBackoffMs);
    return Math.max(jittered, (retryAfter ?? 0) * 1000);
  }

  private async read(resp: Response, raw?: boolean): Promise<unknown> {
    if (resp.status === 204) return undefined;
    if (raw) return new Uint8Array(await resp.arrayBuffer());
    const type = resp.headers.get("content-type") ?? "";
    if (type.startsWith("application/json")) return resp.json();
    return new Uint8Array(await resp.arrayBuffer());
  }

  private async problem(resp: Response): Promise<ApiError> {
    const text = await resp.text();
    let problem: Problem;
    try {
      const v: unknown = JSON.parse(text);
      problem = v && typeof v === "object" && !Array.isArray(v) ? (v as Problem) : { detail: text.slice(0, 200) };
    } catch {
      problem = { code: "unknown", detail: text.slice(0, 200), status: resp.status };
    }
    return fromProblem(resp.status, problem, retryAfterSeconds(resp));
  }
}

function enc(id: string): string {
  return encodeURIComponent(id);
}

function inboxQuery(filter: InboxFilter): Query {
  return {
    status: filter.status === undefined ? "pending" : filter.status,
    authorization_id: filter.authorizationId,
    scope: filter.scope,
    limit: filter.pageSize,
  };
}
