#!/usr/bin/env bash
# The README walkthrough as a script, against a running `allowly serve` (./scripts/run.sh):
# create a workspace and its keys, record a grant, ask for checks, wait for the receipt to be
# signed, and verify it offline with allowly-verify using only the public keys.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
URL="${ALLOWLY_URL:-http://127.0.0.1:8080}"
DATA="${ALLOWLY_DATA_DIR:-$ALLOWLY_ROOT/allowly-data}"
VERIFY="$CARGO_TARGET_DIR/release/allowly-verify"
OUT="$(mktemp -d)"
ADMIN="$(cat "$DATA/admin-token")"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }
post() { curl -sS --fail-with-body -X POST "$URL$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' -d "$3"; }

echo "== 1. a workspace (its Ed25519 key is created inside the signer)"
WS="$(post /v1/workspaces "$ADMIN" '{"name":"demo","scope_rules":{"payments.*":"escalate","mail.send":"confirm"}}' | json 'd["id"]')"
echo "workspace $WS"
APP="$(post "/v1/workspaces/$WS/api-keys" "$ADMIN" '{"roles":["admin"]}' | json 'd["secret"]')"
AGENT="$(post "/v1/workspaces/$WS/api-keys" "$ADMIN" '{"roles":["check"]}' | json 'd["secret"]')"

echo "== 2. the user approves scopes once"
AUTH="$(post /v1/authorizations "$APP" '{"subject":"user-42","scopes":["files.read","mail.*","payments.*"],"resources":["drive:/reports/*"]}' | json 'd["authorization"]["id"]')"
echo "authorization $AUTH"

echo "== 3. the agent asks before each action"
for ask in '"scopes":["files.read"],"resource":"drive:/reports/q3.pdf"' \
           '"scopes":["files.delete"],"resource":"drive:/reports/q3.pdf"' \
           '"scopes":["mail.send"],"resource":"drive:/reports/q3.pdf"' \
           '"scopes":["payments.wire"],"resource":"drive:/reports/q3.pdf"'; do
  post /v1/check "$AGENT" "{\"authorization_id\":\"$AUTH\",$ask}" | json '"%-9s %-22s receipt %s" % (d["decision"], d["reason"], d["receipt"]["receipt_id"])'
done
RID="$(post /v1/check "$AGENT" "{\"authorization_id\":\"$AUTH\",\"scopes\":[\"files.read\"],\"resource\":\"drive:/reports/q4.pdf\"}" | json 'd["receipt"]["receipt_id"]')"

echo "== 4. the receipt is signed in the background; fetch it and the public keys"
for _ in $(seq 1 100); do
  curl -sS "$URL/v1/receipts/$RID" -H "Authorization: Bearer $APP" > "$OUT/receipt.json"
  [ "$(json 'd["status"]' < "$OUT/receipt.json")" = signed ] && break
  sleep 0.1
done
curl -sS "$URL/v1/workspaces/$WS/keys" > "$OUT/keys.json"   # public: no credentials
curl -sS "$URL/v1/authorizations/$AUTH/export" -H "Authorization: Bearer $APP" > "$OUT/trail.jsonl"

echo "== 5. verify offline, with only the public keys"
"$VERIFY" receipt "$OUT/receipt.json" --keys "$OUT/keys.json"
"$VERIFY" bundle "$OUT/trail.jsonl" --keys "$OUT/keys.json"   # everything up to the last receipt is signed
echo "files kept in $OUT"
