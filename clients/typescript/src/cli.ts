#!/usr/bin/env node
/**
 * `allowly-verify-js receipt FILE --keys KEYS` /
 * `bundle FILE [--keys KEYS] [--checkpoint NOTE]… [--semantics | --no-semantics]`, each with
 * an optional witness policy `--witness-key VKEY… --witness-quorum N` (§7.5: every checkpoint
 * cosigned by N distinct witnesses of the given keys): the SDK's offline verifier with
 * `allowly-verify`'s exit statuses (0 valid, 1 integrity failure, 2 coverage gap, 3 valid
 * unpinned, 64 unusable input or usage). Semantic verification (§7.4) runs by default on a log
 * export; `--semantics` asks for it on an authorization export, `--no-semantics` turns it off.
 */

import { readFileSync } from "node:fs";

import { EXIT, Report, UnusableInput, verifyBundle, verifyReceipt, witnessPolicy } from "./verify.js";

const USAGE =
  "usage: allowly-verify-js receipt FILE --keys KEYS [WITNESS POLICY]\n" +
  "       allowly-verify-js bundle FILE [--keys KEYS] [--checkpoint NOTE_FILE ...] [--semantics | --no-semantics]\n" +
  "                         [WITNESS POLICY]\n" +
  "WITNESS POLICY: --witness-key VKEY [--witness-key VKEY ...] --witness-quorum N\n" +
  "       every checkpoint must be cosigned by N distinct witnesses of the given keys";

function print(report: Report): void {
  for (const note of report.notes) console.log(`note: ${note}`);
  for (const f of report.findings) console.log(`${f.code}: ${f.detail}`);
  console.log(`outcome: ${report.outcome()}`);
}

function main(argv: string[]): number {
  const [cmd, file, ...rest] = argv;
  if ((cmd !== "receipt" && cmd !== "bundle") || file === undefined) {
    console.error(USAGE);
    return EXIT.unusable;
  }
  let keys: string | undefined;
  const notes: string[] = [];
  let semantics: boolean | null = null;
  const witnessKeys: string[] = [];
  let quorum: number | undefined;
  for (let i = 0; i < rest.length; ) {
    const [flag, value] = [rest[i], rest[i + 1]];
    if ((flag === "--semantics" || flag === "--no-semantics") && cmd === "bundle" && semantics === null) {
      semantics = flag === "--semantics";
      i += 1;
      continue;
    }
    if (flag === "--keys" && value !== undefined && keys === undefined) keys = value;
    else if (flag === "--checkpoint" && value !== undefined && cmd === "bundle") notes.push(value);
    else if (flag === "--witness-key" && value !== undefined) witnessKeys.push(value);
    else if (flag === "--witness-quorum" && value !== undefined && quorum === undefined && /^[0-9]+$/.test(value)) quorum = Number(value);
    else {
      console.error(USAGE);
      return EXIT.unusable;
    }
    i += 2;
  }
  if ((witnessKeys.length > 0) !== (quorum !== undefined)) {
    console.error(`--witness-key and --witness-quorum go together\n${USAGE}`);
    return EXIT.unusable;
  }
  try {
    const witness = quorum === undefined ? null : witnessPolicy(witnessKeys, quorum);
    const keyBytes = keys === undefined ? undefined : readFileSync(keys);
    const data = readFileSync(file);
    let report: Report;
    if (cmd === "receipt") {
      if (keyBytes === undefined) throw new UnusableInput("a receipt needs --keys");
      report = verifyReceipt(data, keyBytes, witness);
    } else {
      report = verifyBundle(data, keyBytes ?? null, notes.map((n) => readFileSync(n, "utf8")), semantics, witness);
    }
    print(report);
    return report.exitCode();
  } catch (e) {
    if (e instanceof UnusableInput || (e as NodeJS.ErrnoException).code !== undefined) {
      console.error(`unusable input: ${(e as Error).message}`);
      return EXIT.unusable;
    }
    throw e;
  }
}

process.exitCode = main(process.argv.slice(2));
