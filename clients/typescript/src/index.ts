/**
 * Allowly's TypeScript client: ask before every agent action, wait for a person's answer,
 * and verify the signed receipts offline.
 *
 * ```ts
 * import { Allowly } from "allowly";
 * const allowly = new Allowly(process.env.ALLOWLY_CHECK_KEY!, { baseUrl: "http://127.0.0.1:8080" });
 * const result = await allowly.check(authorizationId, "email.send", { context: { to } });
 * if ((await allowly.waitForDecision(result)).allowed) await sendEmail(to);
 * ```
 */

export { Allowly, DEFAULT_BASE_URL, MAX_LONG_POLL_MS, PENDING_REASON_HEADER } from "./client.js";
export type { Answer, CheckOptions, ClientOptions, GrantOptions, InboxFilter, PostOptions } from "./client.js";
export * as errors from "./errors.js";
export { AllowlyError, ApiError, TransportError, VerificationError } from "./errors.js";
export * from "./models.js";
export {
  CosignatureError,
  EXIT,
  FINDING_CLASS,
  Report,
  UnusableInput,
  WitnessPolicy,
  parseWitnessVkey,
  readKeySet,
  verifyBundle,
  verifyReceipt,
  witnessPolicy,
} from "./verify.js";
export type { KeySet, Outcome as VerificationOutcome, Witness } from "./verify.js";
export { claudeCodeScope, mcpScope, segment as scopeSegment } from "./toolScopes.js";
