// Shared by the tests: where the repository is, and the server the Rust test started.

import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Compiled to build/test/: the repository is four levels up (clients/typescript/build/test). */
export const repoRoot = process.env.ALLOWLY_REPO_ROOT ?? resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

export interface Env {
  url: string;
  workspace: string;
  admin: string;
  reader: string;
  checker: string;
}

/** The server and keys crates/allowly-server/tests/it/clients.rs passes; a test that needs them fails without. */
export function env(): Env {
  const url = process.env.ALLOWLY_TEST_URL;
  if (!url) throw new Error("ALLOWLY_TEST_URL is not set: run through `cargo test -p allowly-server --test it clients`");
  const need = (name: string) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set`);
    return v;
  };
  return {
    url,
    workspace: need("ALLOWLY_TEST_WORKSPACE"),
    admin: need("ALLOWLY_TEST_ADMIN_KEY"),
    reader: need("ALLOWLY_TEST_READ_KEY"),
    checker: need("ALLOWLY_TEST_CHECK_KEY"),
  };
}

/** Polls `f` until it gives something (the server signs receipts in the background). */
export async function eventually<T>(what: string, f: () => Promise<T | null | undefined>, deadlineMs = 20_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
