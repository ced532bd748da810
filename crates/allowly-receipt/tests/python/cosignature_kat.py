"""Independent implementation of C2SP cosignature/v1 (https://c2sp.org/tlog-cosignature) with
Python's `cryptography`, written from the spec only, to cross-check the known answer pinned in
crates/allowly-receipt/src/cosignature.rs (`kat_cross_checked_with_python`).

Run: $ALLOWLY_VENV/bin/python crates/allowly-receipt/tests/python/cosignature_kat.py
It prints the verifier key and the cosignature line; with --check it compares them to the
constants in cosignature.rs and exits 1 on a difference.
"""

import base64
import hashlib
import pathlib
import re
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

NAME = "witness.example/w1"
SEED = bytes([0x42] * 32)
TIME = 1767225600
TEXT = "allowly/ws_kat\n5\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\ntime 2026-01-01T00:00:00.000Z\n"


def main() -> int:
    sk = Ed25519PrivateKey.from_private_bytes(SEED)
    pub = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    # key ID = SHA-256(<name> || "\n" || 0x04 || 32-byte public key)[:4]
    key_id = hashlib.sha256(NAME.encode() + b"\n" + b"\x04" + pub).digest()[:4]
    key_b64 = base64.b64encode(b"\x04" + pub).decode()
    vkey = f"{NAME}+{key_id.hex()}+{key_b64}"
    # signed message: "cosignature/v1\n" "time <decimal>\n" then the checkpoint note body
    msg = f"cosignature/v1\ntime {TIME}\n{TEXT}".encode()
    sig = sk.sign(msg)
    # signature line payload: key ID || u64 big-endian timestamp || 64-byte signature
    payload = base64.b64encode(key_id + struct.pack(">Q", TIME) + sig).decode()
    line = f"\u2014 {NAME} {payload}\n"
    print(vkey)
    print(line, end="")
    if "--check" in sys.argv:
        rs = pathlib.Path(__file__).parents[2] / "src" / "cosignature.rs"
        src = rs.read_text()
        want_vkey = re.search(r'const KAT_VKEY: &str = "([^"]*)";', src).group(1)
        want_line = re.search(r'const KAT_LINE: &str = "([^"]*)\\n";', src).group(1) + "\n"
        if (want_vkey, want_line) != (vkey, line):
            print(f"MISMATCH: Rust has\n{want_vkey}\n{want_line}", file=sys.stderr)
            return 1
        print("Rust constants match", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
