"""The real server the client-side suites run against: crates/allowly-server/tests/it/clients.rs
starts `allowly serve`, makes a workspace and one key per role, and passes them in the
environment. Shared by the Python SDK's, the Claude Code hook's and the MCP gateway's tests
(the latter two put this directory on `sys.path`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest


@dataclass
class Env:
    url: str
    workspace: str
    admin: str
    reader: str
    checker: str


@pytest.fixture(scope="session")
def env() -> Env:
    url = os.environ.get("ALLOWLY_TEST_URL")
    if not url:
        pytest.fail("ALLOWLY_TEST_URL is not set: run these tests through `cargo test -p allowly-server --test it clients`")
    return Env(url, os.environ["ALLOWLY_TEST_WORKSPACE"], os.environ["ALLOWLY_TEST_ADMIN_KEY"],
               os.environ["ALLOWLY_TEST_READ_KEY"], os.environ["ALLOWLY_TEST_CHECK_KEY"])


def eventually(what, f, deadline_s: float = 20.0, every_s: float = 0.05):
    """Polls `f` until it returns something truthy (the server signs receipts in the background)."""
    end = time.monotonic() + deadline_s
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(every_s)
