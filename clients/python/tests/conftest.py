"""The SDK's tests run against a real `allowly serve` (live_server.py). Tests that need no
server (retries on a mock transport, the error table, the vectors) run without it."""

from live_server import Env, env, eventually  # noqa: F401 - `env` is the suites' fixture
