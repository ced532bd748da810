"""The witness policy of the offline verifier (docs/receipt-format.md §7.5, c2sp.org/tlog-cosignature),
without a server: the cosignature parser and the verifier key reader, a known answer pinned in
the Rust code (crates/allowly-receipt/src/cosignature.rs), and the committed receipt and bundle
vectors cosigned here by test witnesses. The same against a server with real witnesses:
crates/allowly-server/tests/it/witness.rs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import allowly
from allowly import errors
from allowly import verify as v

VECTORS = Path(__file__).resolve().parents[3] / "crates/allowly-receipt/tests/vectors"
COSIGNER = b"\x04"  # the type byte of a cosigner verifier key
KEYS = (VECTORS / "keys.json").read_bytes()
RECEIPT = json.loads((VECTORS / "valid/receipt-check-allow.json").read_text("utf-8"))
BUNDLE = (VECTORS / "valid/bundle-log.jsonl").read_bytes()

# Rust's known answer (cosignature.rs `kat_cross_checked_with_python`): witness
# "witness.example/w1", seed 32 x 0x42, cosigning KAT_TEXT at KAT_TIME.
KAT_NAME = "witness.example/w1"
KAT_TIME = 1_767_225_600
KAT_TEXT = "allowly/ws_kat\n5\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\ntime 2026-01-01T00:00:00.000Z\n"
KAT_VKEY = "witness.example/w1+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS"
KAT_LINE = ("\u2014 witness.example/w1 8e2MRwAAAABpVbkA/hEtUTfrBmCq/Nw5aBzX4KBkv4cKlQRT+v+NBvzW6NUjepk7Cv5hwSJ064U"
            "XViVCYjKxZwRBaUj/oXqCGfYBAg==\n")

# The example of c2sp.org/tlog-cosignature, verbatim (its witness key is not published).
SPEC_COSIGNED = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+"
    "zyWE+xeMcTOAYQ8=\n"
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0"
    "xUe+mbIUBkBIfZ+qnA==\n"
)


class Cosigner:
    """A witness of these tests: a name and an Ed25519 key from a one-byte seed."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.sk = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        self.pk = self.sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = hashlib.sha256(name.encode() + b"\n\x04" + self.pk).digest()[:4]
        self.vkey = f"{name}+{self.key_id.hex()}+{b64(COSIGNER + self.pk)}"

    def raw(self, text: str, timestamp: int = 1_700_000_000, *, name: str | None = None) -> bytes:
        """key id ‖ timestamp ‖ signature over the cosignature/v1 message of `text`."""
        msg = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
        return self.key_id + timestamp.to_bytes(8, "big") + self.sk.sign(msg)

    def line(self, text: str, timestamp: int = 1_700_000_000) -> str:
        return line(self.name, self.raw(text, timestamp))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def line(name: str, raw: bytes) -> str:
    return f"\u2014 {name} {b64(raw)}\n"


def text_of(note: str) -> str:
    return note[: note.rindex("\n\n") + 1]


A, B, C = Cosigner("wa.test/w", 1), Cosigner("wb.test/w", 2), Cosigner("wc.test/w", 3)


def cosigned(receipt: dict, *lines_of) -> dict:
    """The receipt with lines (each a function of the checkpoint text) added to its checkpoint."""
    r = json.loads(json.dumps(receipt))
    text = text_of(r["checkpoint"])
    r["checkpoint"] += "".join(f(text) for f in lines_of)
    return r


def policy(*witnesses, quorum: int):
    return allowly.witness_policy([w if isinstance(w, str) else w.vkey for w in witnesses], quorum)


def outcome(receipt: dict, witness=None) -> tuple[str, set[str]]:
    report = allowly.verify_receipt(receipt, KEYS, witness)
    return report.outcome(), report.codes()


# ---- the parsers ----------------------------------------------------------------------------

def test_the_rust_known_answer_verifies_and_its_vkey_reads():
    w = v.parse_witness_vkey(KAT_VKEY)
    assert (w.name, w.key_id.hex(), w.vkey) == (KAT_NAME, "f1ed8c47", KAT_VKEY)
    good = v.verify_cosignatures(f"{KAT_TEXT}\n{KAT_LINE}", [w])
    assert [(x.name, t) for x, t in good] == [(KAT_NAME, KAT_TIME)]
    # A test witness of ours derives the same vkey from the same seed.
    assert Cosigner(KAT_NAME, 0x42).vkey == KAT_VKEY
    assert Cosigner(KAT_NAME, 0x42).line(KAT_TEXT, KAT_TIME) == KAT_LINE


def test_the_spec_example_parses_as_a_cosignature_and_the_log_signature_does_not():
    text, _, sigs = v.parse_signed_note(SPEC_COSIGNED)
    (log_name, log_sig), (w_name, w_sig) = sigs
    assert w_name == "witness.example.com/w1" and w_sig[:4].hex() == "8d66cf3f"
    timestamp, signature = v.parse_cosignature(w_sig)
    assert timestamp == 1_679_315_147 and len(signature) == 64
    assert v.cosignature_message(text, timestamp) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
    assert v.parse_cosignature(log_sig) is None  # key id + 64 bytes: a note signature, not a cosignature


def test_cosignature_lengths_and_timestamps():
    raw = A.raw(KAT_TEXT)
    assert v.parse_cosignature(raw) is not None
    for bad in (raw[:-1], raw + b"\x00", raw[:4] + raw[12:], b"", raw[:4]):
        assert v.parse_cosignature(bad) is None, len(bad)
    top = (2**63 - 1).to_bytes(8, "big")
    assert v.parse_cosignature(raw[:4] + top + raw[12:])[0] == 2**63 - 1
    assert v.parse_cosignature(raw[:4] + (2**63).to_bytes(8, "big") + raw[12:]) is None
    assert v.parse_cosignature(raw[:4] + b"\xff" * 8 + raw[12:]) is None


@pytest.mark.parametrize("bad", [
    "",
    "witness.example/w1",
    "witness.example/w1+f1ed8c47",
    "witness.example/w1+F1ED8C47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS",  # uppercase key id
    "witness.example/w1+f1ed8c48+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS",  # wrong key id
    "witness.example/w2+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS",  # another name
    "witness example+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS",  # space in the name
    "+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS",  # empty name
    "witness.example/w1+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgds",  # not base64
    "witness.example/w1+f1ed8c47+IVL402xt5HRFMkLhXy6rbLfP+ntqXtMAl5YOBpiB2xI=",  # no type byte
    "allowly/ws_vectors+9e39d6b8+AUpnLpn5SJpGJC3yLezkDKAnz7NJqSQ8+wxuZPe76aIe",  # a log key (0x01)
])
def test_bad_witness_vkeys_are_bad_usage(bad):
    with pytest.raises(v.Unusable):
        v.parse_witness_vkey(bad)
    with pytest.raises(errors.VerificationError):
        allowly.witness_policy([bad], 1)


def test_a_small_order_witness_key_is_refused():
    identity = bytes([1]) + bytes(31)  # the identity point: small order
    kid = hashlib.sha256(b"w\n\x04" + identity).digest()[:4].hex()
    with pytest.raises(v.Unusable, match="large order"):
        v.parse_witness_vkey(f"w+{kid}+{b64(COSIGNER + identity)}")


def test_the_quorum_is_between_one_and_the_distinct_keys():
    for q in (0, -1, 3, True, "2"):
        with pytest.raises(errors.VerificationError):
            policy(A, B, quorum=q)
    # One key listed twice (or under two names) is one witness.
    same_key_other_name = Cosigner("wa.other/w", 1)
    with pytest.raises(errors.VerificationError):
        policy(A, A, same_key_other_name, quorum=2)
    assert policy(A, B, quorum=2).quorum == 2


# ---- one receipt ----------------------------------------------------------------------------

def test_a_receipt_cosigned_by_the_quorum_is_valid_and_without_a_policy_nothing_changes():
    assert outcome(RECEIPT) == ("valid", set())
    r = cosigned(RECEIPT, A.line, B.line)
    assert outcome(r) == ("valid", set()), "cosignatures are unknown signatures without a policy"
    for q in (1, 2):
        assert outcome(r, policy(A, B, quorum=q)) == ("valid", set())
    report = allowly.verify_receipt(r, KEYS, policy(A, B, quorum=2))
    assert "witness policy: every checkpoint cosigned by 2 of 2 witness keys" in report.notes


def test_fewer_cosignatures_than_the_quorum_is_a_coverage_gap():
    want = ("coverage_gap", {"witness_quorum_not_met"})
    assert outcome(RECEIPT, policy(A, quorum=1)) == want  # none at all
    assert outcome(cosigned(RECEIPT, A.line), policy(A, B, quorum=2)) == want
    assert outcome(cosigned(RECEIPT, A.line, B.line), policy(A, B, C, quorum=3)) == want
    # The same witness twice counts once; so does one key under two names.
    twice = cosigned(RECEIPT, A.line, lambda t: A.line(t, 5))
    assert outcome(twice, policy(A, B, quorum=2)) == want
    alias = Cosigner("wa.alias/w", 1)
    assert outcome(cosigned(RECEIPT, A.line, alias.line), policy(A, alias, B, quorum=2)) == want
    # Lines by keys outside the policy are ignored: a stranger, a log signature.
    assert outcome(cosigned(RECEIPT, A.line, C.line), policy(A, B, quorum=2)) == want


def test_a_line_naming_a_witness_with_another_key_id_is_not_its_cosignature():
    wrong_id = lambda t: line(A.name, B.raw(t))  # noqa: E731 - A's name, B's key id and signature
    assert outcome(cosigned(RECEIPT, wrong_id, B.line), policy(A, B, quorum=2)) == (
        "coverage_gap", {"witness_quorum_not_met"})
    assert outcome(cosigned(RECEIPT, wrong_id, B.line), policy(A, B, quorum=1)) == ("valid", set())


@pytest.mark.parametrize("bad", ["short", "long", "log_sized", "flipped_signature", "flipped_time",
                                 "other_text", "no_header", "time_too_big"])
def test_a_bad_cosignature_by_a_policy_witness_is_an_integrity_failure(bad):
    def make(text: str) -> str:
        raw = bytearray(A.raw(text, 7))
        if bad == "short":
            raw = raw[:-1]
        elif bad == "long":
            raw += b"\x00"
        elif bad == "log_sized":
            raw = raw[:4] + raw[12:]
        elif bad == "flipped_signature":
            raw[40] ^= 1
        elif bad == "flipped_time":
            raw[11] ^= 1
        elif bad == "other_text":
            raw = bytearray(A.raw(text.replace("\n3\n", "\n4\n"), 7))
        elif bad == "no_header":
            raw = raw[:12] + A.sk.sign(text.encode())
        elif bad == "time_too_big":
            big = 2**64 - 1
            raw = A.key_id + big.to_bytes(8, "big") + A.sk.sign(f"cosignature/v1\ntime {big}\n{text}".encode())
        return line(A.name, bytes(raw))

    r = cosigned(RECEIPT, B.line, make, C.line)
    # Even with the quorum met by the others.
    assert outcome(r, policy(A, B, C, quorum=2)) == ("integrity_failure", {"witness_cosignature_invalid"})
    # A witness outside the policy: the same line is ignored.
    assert outcome(r, policy(B, C, quorum=2)) == ("valid", set())


def test_a_malformed_signature_line_breaks_the_checkpoint_itself():
    for bad in ("\u2014 wa.test/w\n", "- wa.test/w AAAAAAAA\n", "\u2014 wa.test/w AAAA\n", "\u2014 wa.test/w @@@@\n"):
        r = cosigned(RECEIPT, A.line, lambda t, bad=bad: bad)
        assert outcome(r, policy(A, quorum=1)) == ("integrity_failure", {"checkpoint_malformed"}), bad


def test_a_pending_receipt_has_no_checkpoint_to_judge():
    body = RECEIPT["body"]
    canon = v.canonical_json(body)
    pending = {"status": "pending", "receipt_id": body["id"], "log_index": body["log_index"],
               "leaf_hash": v.leaf_hash(canon).hex(), "body": body}
    assert outcome(pending, policy(A, quorum=1)) == ("coverage_gap", {"not_signed"})


# ---- bundles and the command line -----------------------------------------------------------

def cosign_bundle(data: bytes, *witnesses, skip: int = 0) -> bytes:
    """The bundle with each distinct checkpoint note cosigned by `witnesses` (the first `skip`
    notes, in order of appearance, left alone)."""
    notes = []
    for ln in data.splitlines():
        rec = json.loads(ln)
        note = rec.get("checkpoint") or (rec.get("receipt") or {}).get("checkpoint")
        if note and note not in notes:
            notes.append(note)
    assert len(notes) >= 2
    text = data.decode("utf-8")
    for note in notes[skip:]:
        new = note + "".join(w.line(text_of(note)) for w in witnesses)
        enc = lambda s: json.dumps(s, ensure_ascii=False)  # noqa: E731
        assert enc(note) in text
        text = text.replace(enc(note), enc(new))
    return text.encode("utf-8")


def test_a_bundle_needs_the_quorum_on_every_checkpoint():
    good = cosign_bundle(BUNDLE, A, B)
    assert allowly.verify_bundle(good, KEYS, witness=policy(A, B, quorum=2)).outcome() == "valid"
    assert allowly.verify_bundle(good, KEYS).outcome() == "valid"
    one_short = cosign_bundle(BUNDLE, A, B, skip=1)
    r = allowly.verify_bundle(one_short, KEYS, witness=policy(A, B, quorum=1))
    assert (r.outcome(), r.codes()) == ("coverage_gap", {"witness_quorum_not_met"})
    assert len(r.findings) == 1, r.findings  # one note, judged once wherever it appears
    # An auditor's own checkpoint without cosignatures falls short too.
    first = next(json.loads(ln)["checkpoint"] for ln in BUNDLE.splitlines() if b'"type":"checkpoint"' in ln)
    r = allowly.verify_bundle(good, KEYS, [first], witness=policy(A, quorum=1))
    assert r.codes() == {"witness_quorum_not_met"} and "checkpoint #" in r.findings[0][1]


def test_the_command_line_takes_the_policy_with_allowly_verify_exit_codes(tmp_path, capsys):
    keys = tmp_path / "keys.json"
    keys.write_bytes(KEYS)
    good, short = tmp_path / "good.jsonl", tmp_path / "short.jsonl"
    good.write_bytes(cosign_bundle(BUNDLE, A, B))
    short.write_bytes(cosign_bundle(BUNDLE, A))
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(cosigned(RECEIPT, lambda t: line(A.name, A.raw(t)[:-1] + b"\x00"))))
    pol = ["--witness-key", A.vkey, "--witness-key", B.vkey, "--witness-quorum", "2"]
    run = lambda *args: v.main([str(a) for a in args])  # noqa: E731
    assert run("bundle", good, "--keys", keys, *pol) == 0
    assert run("bundle", short, "--keys", keys, *pol) == 2
    assert run("bundle", short, "--keys", keys, "--witness-key", A.vkey, "--witness-quorum", "1") == 0
    assert run("bundle", good, *pol) == 3  # unpinned stays unpinned
    assert run("receipt", tampered, "--keys", keys, *pol) == 1
    out = capsys.readouterr().out
    assert "witness_quorum_not_met" in out and "witness_cosignature_invalid" in out
    # Bad usage: exit 64, before anything is read.
    for bad in (["--witness-key", A.vkey], ["--witness-quorum", "1"], [*pol[:2], "--witness-quorum", "0"],
                [*pol, "--witness-quorum", "1"], ["--witness-key", "nope", "--witness-quorum", "1"],
                [*pol[:4], "--witness-quorum", "x"]):
        assert run("bundle", good, "--keys", keys, *bad) == 64, bad


# ---- what the client reads: the pending reason, the checkpoint's witness status -------------
# (On a mock transport here; against a server whose witness is stopped: live_witness.py, run by
# crates/allowly-server/tests/it/witness.rs.)

def pending_of(receipt: dict) -> dict:
    body = receipt["body"]
    return {"status": "pending", "receipt_id": body["id"], "log_index": body["log_index"],
            "leaf_hash": v.leaf_hash(v.canonical_json(body)).hex(), "body": body}


def receipt_server(answers: list[tuple[dict, dict]]):
    """A mock transport answering GET /v1/receipts/… with `answers` (JSON, headers) in turn (the
    last one again once they run out); `calls` counts the reads."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/receipts/{RECEIPT['body']['id']}", request.url
        calls.append(request)
        doc, headers = answers[min(len(calls), len(answers)) - 1]
        return httpx.Response(200, json=doc, headers=headers)
    return handler, calls


PENDING_WITNESS = (pending_of(RECEIPT), {"allowly-pending-reason": "witness_quorum"})
PENDING_PLAIN = (pending_of(RECEIPT), {})
SIGNED = (RECEIPT, {"allowly-pending-reason": "witness_quorum"})


def test_get_receipt_reports_the_pending_reason_outside_the_document():
    handler, _ = receipt_server([PENDING_WITNESS])
    client = allowly.Allowly("k", http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://a.test"))
    r = client.get_receipt(RECEIPT["body"]["id"])
    assert (r.status, r.pending_reason) == ("pending", allowly.WITNESS_QUORUM)
    assert "pending_reason" not in r.raw
    # It verifies as the server sent it: pending, a coverage gap.
    assert allowly.verify_receipt(r, KEYS).codes() == {"not_signed"}
    handler, _ = receipt_server([PENDING_PLAIN])
    client = allowly.Allowly("k", http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://a.test"))
    assert client.get_receipt(RECEIPT["body"]["id"]).pending_reason is None
    # A signed receipt has no pending reason, whatever the headers say.
    handler, _ = receipt_server([SIGNED])
    client = allowly.Allowly("k", http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://a.test"))
    assert client.get_receipt(RECEIPT["body"]["id"]).pending_reason is None


def test_wait_for_receipt_waits_through_a_witness_quorum_pending():
    rid = RECEIPT["body"]["id"]
    handler, calls = receipt_server([PENDING_PLAIN, PENDING_WITNESS, PENDING_WITNESS, SIGNED])
    client = allowly.Allowly("k", http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://a.test"))
    r = client.wait_for_receipt(rid, timeout=10, poll_interval=0.001)
    assert r.signed and r.pending_reason is None and len(calls) == 4
    assert allowly.verify_receipt(r, KEYS).outcome() == "valid"
    # Not signed in time: the last pending read, with its reason.
    handler, calls = receipt_server([PENDING_WITNESS])
    client = allowly.Allowly("k", http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://a.test"))
    r = client.wait_for_receipt(rid, timeout=0.2, poll_interval=0.01)
    assert (r.signed, r.pending_reason) == (False, "witness_quorum") and len(calls) >= 3


def test_the_async_client_reads_the_same():
    rid = RECEIPT["body"]["id"]

    async def run():
        handler, calls = receipt_server([PENDING_WITNESS, PENDING_WITNESS, SIGNED])
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://a.test")
        async with allowly.AsyncAllowly("k", http=http) as client:
            first = await client.get_receipt(rid)
            done = await client.wait_for_receipt(rid, timeout=10, poll_interval=0.001)
        return first, done, len(calls)

    first, done, n = asyncio.run(run())
    assert first.pending_reason == "witness_quorum" and done.signed and n == 3


def test_get_checkpoint_reads_the_witness_status():
    note = RECEIPT["checkpoint"]
    answers = {
        "ws_q": {"workspace_id": "ws_q", "size": 3, "checkpoint": note, "witness": {"quorum": 2, "witnessed_size": 2}},
        "ws_none_yet": {"workspace_id": "ws_none_yet", "size": 3, "checkpoint": note, "witness": {"quorum": 1}},
        "ws_off": {"workspace_id": "ws_off", "size": 3, "checkpoint": note},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        ws = request.url.path.split("/")[3]
        assert request.url.path == f"/v1/workspaces/{ws}/log/checkpoint"
        return httpx.Response(200, json=answers[ws])

    client = allowly.Allowly("k", http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://a.test"))
    cp = client.get_checkpoint("ws_q")
    assert (cp.size, cp.checkpoint, cp.witness) == (3, note, allowly.WitnessStatus(2, 2))
    assert client.get_checkpoint("ws_none_yet").witness == allowly.WitnessStatus(1, None)
    assert client.get_checkpoint("ws_off").witness is None
