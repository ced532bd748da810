/**
 * The API's answers as types (field names as in docs/openapi.json). The client hands them over
 * as parsed, so a receipt is verified from exactly what the server sent (see `verify`).
 */

export type Decision = "allow" | "deny" | "confirm" | "escalate";
export const ALLOW = "allow";
export const DENY = "deny";
export const CONFIRM = "confirm";
export const ESCALATE = "escalate";

/** A person's answer to a confirmation or an escalation. */
export type Outcome = "approved" | "declined";
export const APPROVED = "approved";
export const DECLINED = "declined";

/**
 * Why a pending receipt is not signed yet, when the server knows more than "not yet" (header
 * `Allowly-Pending-Reason` of `GET /v1/receipts/{id}`): `witness_quorum` when its checkpoint is
 * signed but not yet cosigned by the server's witness quorum (docs/witness.md).
 */
export type PendingReason = "witness_quorum" | (string & {});
export const WITNESS_QUORUM = "witness_quorum";

/** A receipt body (docs/receipt-format.md §4); members beyond these are kept. */
export interface ReceiptBody {
  v: number;
  id: string;
  workspace_id: string;
  authorization_id: string | null;
  seq: number | null;
  prev: string | null;
  log_index: number;
  kind: string;
  decision: Decision | null;
  reason: string | null;
  scopes: string[];
  resource: string | null;
  time: string;
  auth_state_hash: string | null;
  [member: string]: unknown;
}

/** `pending` (durable, its leaf hash committed) or `signed` (verifies alone, offline). */
export interface Receipt {
  status: "pending" | "signed";
  log_index: number;
  body: ReceiptBody;
  receipt_id?: string;
  leaf_hash?: string;
  inclusion_proof?: string[];
  checkpoint?: string;
}

/**
 * A receipt as `getReceipt` and `waitForReceipt` answer it: the document the server sent, and
 * on a pending one the server's `pending_reason` when it gave one. `pending_reason` is not
 * enumerable: it is not part of the receipt document (not in `JSON.stringify`), so the receipt
 * still verifies exactly as sent.
 */
export type FetchedReceipt = Receipt & { readonly pending_reason?: PendingReason };

/**
 * Where the witnesses are, on a server that requires a witness quorum (docs/witness.md):
 * receipts at log indices below `witnessed_size` are reported signed; `witnessed_size` is
 * absent while no checkpoint has the quorum's cosignatures.
 */
export interface WitnessStatus {
  quorum: number;
  witnessed_size?: number | null;
}

/**
 * `GET /v1/workspaces/{ws}/log/checkpoint`: the newest signed checkpoint (`checkpoint`, the C2SP
 * signed note with the witnesses' cosignatures the server stored for it, for
 * `verifyBundle(…, checkpoints)`), and `witness` when the server requires a witness quorum.
 */
export interface Checkpoint {
  workspace_id: string;
  size: number;
  checkpoint: string;
  witness?: WitnessStatus | null;
}

export interface Authorization {
  id: string;
  workspace_id: string;
  subject: string;
  scopes: string[];
  resources: string[];
  status: "active" | "revoked" | "expired";
  trail_length: number;
  expires_at: string | null;
  created_at: string;
  revoked_at: string | null;
  metadata?: unknown;
}

/** A created or revoked authorization and the receipt recording it. */
export interface AuthorizationChange {
  authorization: Authorization;
  receipt: Receipt;
}

/**
 * A confirmation: what to show the user (`scopes`, `resource`, `context`) and the nonce their
 * answer goes to. From `check` only the first members are set; from the inbox all.
 */
export interface Confirmation {
  nonce: string;
  expires_at: string;
  scopes: string[];
  resource: string | null;
  /** The check's `context`, echoed: what the agent is about to do. */
  context?: unknown;
  status?: "pending" | "answered" | "expired";
  authorization_id?: string;
  created_at?: string;
  check_receipt_id?: string;
  decision?: Decision | null;
  reason?: string | null;
  answered_at?: string | null;
  by?: string | null;
  answer_receipt_id?: string | null;
}

/** An escalation to an approver. From `check` only `id` and `expires_at` are set. */
export interface Escalation {
  id: string;
  expires_at: string;
  status?: "pending" | "approved" | "declined" | "expired";
  authorization_id?: string;
  scopes?: string[];
  resource?: string | null;
  created_at?: string;
  check_receipt_id?: string;
  resolved_at?: string | null;
  by?: string | null;
  resolution_receipt_id?: string | null;
  routed_to?: string[];
}

/** `POST /v1/check`. `confirmation` is set for `confirm`, `escalation` for `escalate`. */
export interface CheckResult {
  decision: Decision;
  reason: string;
  /** Every decision has one (format 1.1); `null` only in a replay of an older answer. */
  receipt: Receipt | null;
  confirmation?: Confirmation | null;
  escalation?: Escalation | null;
}

/** The final decision of a confirmation or an escalation (`allow` or `deny`). */
export interface Resolution {
  decision: Decision;
  reason: string;
  receipt: Receipt;
  escalation?: Escalation;
}

/**
 * What `waitForDecision` answers: the decision after any human step, or the first one if
 * there was none. `pending` is true when the wait ended before a person answered: the agent
 * must not act (treat it as deny).
 */
export interface FinalDecision {
  decision: Decision;
  reason: string;
  receiptId: string | null;
  pending: boolean;
  /** `decision === "allow"` and not pending. */
  allowed: boolean;
}

/** A workspace's public key set (`GET /v1/workspaces/{ws}/keys`): all a verifier needs. */
export interface KeySetDoc {
  workspace_id: string;
  origin: string;
  keys: Array<Record<string, unknown>>;
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
  next_cursor: string | null;
}
