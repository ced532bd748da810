//! The client side against the real `allowly` binary: the Python SDK's pytest suite
//! (`clients/python`, with the project venv), the TypeScript SDK's `node --test` suite
//! (`clients/typescript`, compiled by its locked `tsc`; `scripts/setup.sh` installs both
//! toolchains' dependencies) and the Claude Code hook's suite (`clients/claude-code`, which runs
//! the hook as Claude Code does) run on a workspace made here and must pass; the Python wheel and
//! the TypeScript package build.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use serde_json::json;

/// A started server and what the suites read from the environment: its URL, a workspace with
/// these scope rules, and one key per role.
struct SdkEnv {
    server: Server,
    _dir: tempfile::TempDir,
    vars: Vec<(&'static str, String)>,
}

fn sdk_env(name: &str, rules: serde_json::Value) -> SdkEnv {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.wait_ready();
    let c = s.client();
    let root = s.admin_token();
    let ws = c.post("/v1/workspaces", &root, json!({ "name": name, "scope_rules": rules })).created("workspace");
    let ws = ws["id"].as_str().unwrap().to_owned();
    let key = |role: &str| {
        let v = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": [role] })).created("key");
        v["secret"].as_str().unwrap().to_owned()
    };
    let vars = vec![
        ("ALLOWLY_TEST_URL", format!("http://{}", s.addr)),
        ("ALLOWLY_TEST_ADMIN_KEY", key("admin")),
        ("ALLOWLY_TEST_READ_KEY", key("read")),
        ("ALLOWLY_TEST_CHECK_KEY", key("check")),
        ("ALLOWLY_TEST_WORKSPACE", ws),
    ];
    SdkEnv { server: s, _dir: dir, vars }
}

/// Runs `cmd` and fails the test, with everything it printed, unless it succeeded.
pub(crate) fn must_pass(mut cmd: Command, diagnostics: impl FnOnce() -> String) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{}
{}",
        describe_output(&format!("{cmd:?}"), &out),
        diagnostics()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn python_sdk_tests_pass_against_the_real_server() {
    let env = sdk_env("python-sdk", sdk_rules());
    pytest(&env, &repo_root().join("clients/python"), "tests");
}

/// The agent-framework examples (`clients/examples`): the Allowly tool gate in a real OpenAI
/// Agents SDK run (a scripted model) and a real LangGraph graph (langchain-core's fake chat model),
/// against this server: an allowed call runs, a denied one never does and the model gets the
/// reason and receipt id, a confirmation or escalation runs only once approved within the bound,
/// fail closed when Allowly is unreachable; each `example.py` runs as documented.
#[test]
fn agent_framework_examples_pass_against_the_real_server() {
    let env = sdk_env("agent-examples", sdk_rules());
    pytest(&env, &repo_root().join("clients/examples"), "tests");
}

/// The rules the SDK suites expect: `email.send` needs the user's confirmation, `payments.*` an
/// approver.
fn sdk_rules() -> serde_json::Value {
    json!({ "email.send": "confirm", "payments.*": "escalate" })
}

/// Runs the pytest suite `tests` (a path in `dir`) with the Python SDK importable; it must pass whole.
fn pytest(env: &SdkEnv, dir: &Path, tests: &str) {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", tests])
        .current_dir(dir)
        .env("PYTHONPATH", repo_root().join("clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.vars.iter().map(|(k, v)| (k, v)));
    let stdout = must_pass(cmd, || env.server.diagnostics());
    assert!(stdout.contains(" passed") && !stdout.contains("skipped"), "{stdout}");
}

/// The Claude Code PreToolUse hook against this server, two ways. Fed the events the real Claude
/// Code sent (its `fixtures/`, recorded), as a subprocess as Claude Code runs it: allow, deny
/// with the reason, ask for a confirm, an escalation waited for (approved while waiting, and not
/// answered in time), fail closed when Allowly is unreachable or the input or configuration is
/// wrong. And in the real Claude Code (the pinned npm package, headless, a scripted model): an
/// allowed Bash and Write run and have receipts, a denied call does not run and the model gets
/// Allowly's reason, nothing runs while Allowly is unreachable, a confirm (`ask`) does not run,
/// an escalated MCP call reaches a real MCP server once approved.
#[test]
fn claude_code_hook_tests_pass_against_the_real_server() {
    let rules =
        json!({ "claude_code.web_fetch": "confirm", "claude_code.edit": "confirm", "mcp.github.*": "escalate" });
    let env = sdk_env("claude-code", rules);
    pytest(&env, &repo_root().join("clients/claude-code"), "tests");
}

/// `allowly-mcp-gateway` between a real MCP client and real MCP servers (the official Python
/// `mcp` package's `ClientSession` and `MCPServer`), against this server: pass-through, allow with
/// the receipt ids in the result's `_meta`, deny as a tool error that never reaches the server,
/// confirm by elicitation (answer recorded) or as an error carrying the nonce, escalation waited
/// for, fail closed when Allowly is unreachable — all-stdio and all-streamable-HTTP, the mixed
/// ways once each, the HTTP front's bearer token; and two servers behind one gateway (`--config`:
/// tools as `<server>__<tool>`, routing, scopes, servers down at start, an HTTP and a stdio server
/// dying mid-session); resource subscriptions relayed and routed, completions routed, a single
/// server reconnected after it died, `DELETE` of a session answered 204, and `https://` servers
/// behind a private CA (refused with any other CA); and MCP 2026-07-28 (`test_extensions.py`,
/// the SDK's 2026-07-28 client, over stdio and the HTTP front): a task-augmented call checked
/// like a plain one (denied: reaches no server; allowed: task and result carry the receipt),
/// tasks reached only by the ids the gateway gave (several servers, another HTTP client),
/// discovery showing the tasks extension only when a server behind offers it, one server start
/// per session over HTTP, a malformed `tools/call` refused, `subscriptions/listen` relayed; a
/// 2026-07-28 client served while the HTTP front's session cap is reached, headers that lie
/// opening no session past it, every request in flight bounded (sessions' too), and a call or
/// read whose client left stopped and cancelled at the server behind, freeing its place
/// (`test_transports.py`).
#[test]
fn mcp_gateway_tests_pass_against_the_real_server() {
    let bin = std::path::Path::new(allowly_bin()).with_file_name("allowly-mcp-gateway");
    assert!(bin.is_file(), "{} is missing: run `cargo build -p allowly-mcp-gateway`", bin.display());
    let mut env =
        sdk_env("mcp-gateway", json!({ "mcp.shop.send_email": "confirm", "mcp.shop.send_payment": "escalate" }));
    env.vars.push(("ALLOWLY_TEST_GATEWAY_BIN", bin.display().to_string()));
    pytest(&env, &repo_root().join("crates/allowly-mcp-gateway/tests/python"), ".");
}

/// The TypeScript SDK's directory and its locked compiler (`npm ci` by `scripts/setup.sh`).
pub(crate) fn typescript_sdk() -> (PathBuf, PathBuf) {
    let sdk = repo_root().join("clients/typescript");
    let tsc = sdk.join("node_modules/.bin/tsc");
    assert!(tsc.is_file(), "{} is missing: run scripts/setup.sh", tsc.display());
    (sdk, tsc)
}

/// Compiles the SDK with `config` into `out` (never into the source tree).
pub(crate) fn tsc(sdk: &Path, tsc: &Path, config: &str, out: &Path) {
    let mut cmd = Command::new(tsc);
    cmd.args(["-p", config, "--outDir"]).arg(out).current_dir(sdk);
    must_pass(cmd, String::new);
}

#[test]
fn typescript_sdk_tests_pass_against_the_real_server() {
    let env = sdk_env("typescript-sdk", sdk_rules());
    let (sdk, compiler) = typescript_sdk();
    let build = tempfile::tempdir().unwrap();
    tsc(&sdk, &compiler, "tsconfig.test.json", build.path());
    let tests: Vec<PathBuf> = std::fs::read_dir(build.path().join("test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.js"))
        .collect();
    assert!(tests.len() >= 3, "{tests:?}");
    let mut cmd = Command::new("node");
    cmd.arg("--test")
        .args(&tests)
        .current_dir(build.path())
        .env("ALLOWLY_REPO_ROOT", repo_root())
        .envs(env.vars.iter().map(|(k, v)| (k, v)));
    let stdout = must_pass(cmd, || env.server.diagnostics());
    // node --test's summary: every test passed, none skipped or left to do.
    let count = |label: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(&format!("# {label} "))?.trim().parse::<u32>().ok()).unwrap_or(0)
    };
    assert!(count("pass") >= 15 && count("fail") == 0 && count("skipped") == 0 && count("todo") == 0, "{stdout}");
}

/// The package as published: ESM with its `.d.ts` types, importable by Node.
#[test]
fn typescript_sdk_builds_an_esm_package_with_types() {
    let (sdk, compiler) = typescript_sdk();
    let out = tempfile::tempdir().unwrap();
    let dist = out.path().join("dist");
    tsc(&sdk, &compiler, "tsconfig.json", &dist);
    for f in ["index.js", "index.d.ts", "client.d.ts", "verify.js", "verify.d.ts", "errors.d.ts", "cli.js"] {
        assert!(dist.join(f).is_file(), "{f} missing from the build");
    }
    std::fs::copy(sdk.join("package.json"), out.path().join("package.json")).unwrap();
    let mut cmd = Command::new("node");
    cmd.args(["--input-type=module", "-e"])
        .arg(
            "const m = await import(process.argv[1]); \
             for (const n of ['Allowly', 'verifyReceipt', 'verifyBundle', 'errors', 'ALLOW']) \
               if (!(n in m)) throw new Error('missing export ' + n); \
             console.log('exports ok');",
        )
        .arg(dist.join("index.js"));
    assert!(must_pass(cmd, String::new).contains("exports ok"));
}

#[test]
fn python_sdk_builds_a_wheel() {
    let out_dir = tempfile::tempdir().unwrap();
    // Built from a copy: setuptools writes `build/` and `*.egg-info` next to the sources.
    let src = tempfile::tempdir().unwrap();
    let sdk = src.path().join("python");
    copy_tree(&repo_root().join("clients/python"), &sdk);
    let mut cmd = Command::new(venv_bin("python"));
    // No build isolation: the venv's setuptools builds it, so this works without the network.
    cmd.args(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q", "-w"])
        .arg(out_dir.path())
        .arg(&sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run pip: {e}"));
    assert!(out.status.success(), "{}", describe_output(&format!("{cmd:?}"), &out));
    let wheels: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("allowly-0.1.0-") && n.ends_with(".whl"))
        .collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    // The wheel holds the package, its offline verifier and its type marker.
    let listing = Command::new(venv_bin("python"))
        .args(["-m", "zipfile", "-l"])
        .arg(out_dir.path().join(&wheels[0]))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["allowly/client.py", "allowly/verify.py", "allowly/errors.py", "allowly/py.typed"] {
        assert!(listing.contains(f), "{f} missing from the wheel:\n{listing}");
    }
}

/// Copies a directory tree (files and folders; `__pycache__` left out).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "__pycache__" {
                copy_tree(&src, &dst);
            }
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}
