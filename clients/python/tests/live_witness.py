"""The SDK against a server that requires a witness quorum, while one of its witnesses is down.

Not part of `pytest tests` (its name does not start with `test_`): the Rust test
`witness::the_sdks_report_a_witness_quorum_pending_and_wait_through_it`
(crates/allowly-server/tests/it/witness.rs) starts the server and real `allowly-witness`
processes, stops one witness, makes a check whose receipt is then pending for the quorum, and
runs this file with it named here:

- ALLOWLY_TEST_URL, ALLOWLY_TEST_READ_KEY, ALLOWLY_TEST_WORKSPACE: the server, a read key, the
  workspace;
- ALLOWLY_TEST_PENDING_RECEIPT: the receipt waiting for the quorum;
- ALLOWLY_TEST_WITNESS_KEYS (comma-separated vkeys) and ALLOWLY_TEST_WITNESS_QUORUM: the
  server's witnesses and quorum, the verifier's witness policy;
- ALLOWLY_TEST_SIGNAL: a file this test creates once it has seen the receipt pending; the Rust
  test then starts the stopped witness again, and the receipt must become signed while
  `wait_for_receipt` waits.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import allowly
from allowly import verify as v


def need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run through `cargo test -p allowly-server --test it witness::`")
    return value


def test_a_witness_quorum_pending_is_reported_and_waited_through():
    url, key, ws = need("ALLOWLY_TEST_URL"), need("ALLOWLY_TEST_READ_KEY"), need("ALLOWLY_TEST_WORKSPACE")
    rid = need("ALLOWLY_TEST_PENDING_RECEIPT")
    vkeys, quorum = need("ALLOWLY_TEST_WITNESS_KEYS").split(","), int(need("ALLOWLY_TEST_WITNESS_QUORUM"))
    policy = allowly.witness_policy(vkeys, quorum)
    reader = allowly.Allowly(key, base_url=url)
    keys = reader.keys(ws)

    # Pending, and why: the checkpoint covering it is signed but lacks the quorum.
    r = reader.get_receipt(rid)
    assert (r.status, r.pending_reason) == ("pending", allowly.WITNESS_QUORUM), r
    assert allowly.verify_receipt(r, keys).codes() == {"not_signed"}
    cp = reader.get_checkpoint(ws)
    assert cp.witness is not None and cp.witness.quorum == quorum, cp
    assert cp.size > r.log_index, "the receipt's checkpoint is stored"
    assert cp.witness.witnessed_size is None or cp.witness.witnessed_size <= r.log_index, cp
    assert 0 < len(v.verify_cosignatures(cp.checkpoint, policy.witnesses)) < quorum, cp.checkpoint

    # Waiting that ends first says so, with the reason; the async client reads the same.
    short = reader.wait_for_receipt(rid, timeout=0.3)
    assert (short.signed, short.pending_reason) == (False, "witness_quorum")

    async def read_async():
        async with allowly.AsyncAllowly(key, base_url=url) as client:
            return await client.get_receipt(rid), await client.wait_for_receipt(rid, timeout=0.3)

    first, waited = asyncio.run(read_async())
    assert first.pending_reason == waited.pending_reason == "witness_quorum" and not waited.signed

    # The witness comes back: waiting goes on through the witness-quorum pending until signed.
    Path(need("ALLOWLY_TEST_SIGNAL")).write_text("pending seen\n")
    signed = reader.wait_for_receipt(rid, timeout=30)
    assert signed.signed and signed.pending_reason is None, signed
    report = allowly.verify_receipt(signed, keys, policy)
    assert report.outcome() == "valid", report.findings
    after = reader.get_checkpoint(ws)
    assert after.witness.witnessed_size is not None and after.witness.witnessed_size > r.log_index, after
