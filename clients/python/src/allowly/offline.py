"""Offline verification with Python objects or bytes, over `allowly.verify` (the spec's §7.1
and §7.2, with its §8 findings, and §7.5 with a witness policy): the same outcomes and exit
codes as `allowly-verify`."""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Union

from . import verify as _v
from .errors import VerificationError
from .models import Receipt

Report = _v.Report
WitnessPolicy = _v.WitnessPolicy

KeysLike = Union[bytes, str, dict]


def _bytes(doc: Any) -> bytes:
    if isinstance(doc, Receipt):
        doc = doc.raw
    if isinstance(doc, (bytes, bytearray)):
        return bytes(doc)
    if isinstance(doc, str):
        return doc.encode("utf-8")
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _keys(keys: KeysLike) -> "_v.KeySet":
    try:
        doc = _v.parse_json(_bytes(keys))
        return _v.load_keyset(doc)
    except (_v.Unusable, _v.JsonSyntaxError) as e:
        raise VerificationError(f"unusable key set: {e}") from e


def witness_policy(witness_keys: Iterable[str], quorum: int) -> "_v.WitnessPolicy":
    """A witness policy (spec §7.5, docs/witness.md), as `allowly-verify --witness-key VKEY …
    --witness-quorum N`: every checkpoint must carry valid `cosignature/v1` cosignatures by at
    least `quorum` distinct witnesses among `witness_keys` (C2SP verifier keys of type 0x04, as
    `allowly-witness init` prints them). A bad key, or a quorum that is not between 1 and the
    number of distinct keys, raises `VerificationError`."""
    try:
        return _v.WitnessPolicy.from_vkeys(list(witness_keys), quorum)
    except _v.Unusable as e:
        raise VerificationError(str(e)) from e


def verify_receipt(receipt: Any, keys: KeysLike, witness: Optional["_v.WitnessPolicy"] = None) -> "_v.Report":
    """One receipt (a `Receipt`, its JSON bytes or a dict) against a workspace's key set
    (`GET /v1/workspaces/{ws}/keys`). `report.outcome()` is `valid` or `integrity_failure`
    (a pending receipt is not signed yet: `coverage_gap`); `report.codes()` the findings.
    With `witness` (`witness_policy(...)`), its checkpoint must also carry the quorum's
    cosignatures: `witness_quorum_not_met` (coverage gap) if it does not,
    `witness_cosignature_invalid` (integrity failure) if one by a given witness is bad."""
    try:
        return _v.verify_receipt(_bytes(receipt), _keys(keys), witness)
    except _v.Unusable as e:
        raise VerificationError(str(e)) from e


def verify_bundle(
    bundle: bytes, keys: KeysLike | None = None, checkpoints: list[str] = (), semantics: bool | None = None,
    witness: Optional["_v.WitnessPolicy"] = None,
) -> "_v.Report":
    """An evidence bundle (JSON Lines, from an export). Pinned to `keys` if given (else its
    own key set: `valid_unpinned` at best); `checkpoints` are signed notes held from before,
    to prove the log only grew. `semantics` re-derives every decision from the log (spec §7.4,
    finding `decision_unjustified`): None = for log exports only (the default), True = for
    authorization exports too, False = never; as the TypeScript SDK's `verifyBundle`.
    `witness` (`witness_policy(...)`) applies to every checkpoint of the bundle, of its
    receipts and of `checkpoints`, as for `verify_receipt`.
    Outcomes: valid, valid_unpinned, integrity_failure, coverage_gap."""
    try:
        return _v.verify_bundle(
            bytes(bundle), _keys(keys) if keys is not None else None, list(checkpoints), semantics, witness
        )
    except _v.Unusable as e:
        raise VerificationError(str(e)) from e
