//! The binary's command line, black-box. (Its work between a real MCP client, a real MCP server
//! and a real Allowly is tested by crates/allowly-server/tests/it/clients.rs, which needs the
//! `allowly` server binary; building this test also builds the gateway binary it runs.)
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_allowly-mcp-gateway"))
}

#[test]
fn without_a_check_key_it_refuses_to_start() {
    let out = gateway()
        .args(["--authorization-id", "au_1", "--server-name", "s", "--", "true"])
        .env_remove("ALLOWLY_CHECK_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ALLOWLY_CHECK_KEY is not set"), "{out:?}");
}

#[test]
fn without_a_server_command_it_is_a_usage_error() {
    let out = gateway()
        .args(["--authorization-id", "au_1", "--server-name", "s"])
        .env("ALLOWLY_CHECK_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn an_https_or_malformed_allowly_url_is_refused() {
    let out = gateway()
        .args(["--allowly-url", "https://a:1", "--authorization-id", "au_1", "--server-name", "s", "--", "true"])
        .env("ALLOWLY_CHECK_KEY", "k")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allowly-url must be http://HOST:PORT"), "{out:?}");
}

/// Runs `cmd` (with a check key): it must fail at start and say `why` on stderr.
fn refused_at_start(cmd: &mut Command, why: &str) {
    let out = cmd.env("ALLOWLY_CHECK_KEY", "k").output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{out:?}");
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused() {
    refused_at_start(
        gateway()
            .args(["--listen", "0.0.0.0:0", "--authorization-id", "au_1", "--server-name", "s", "--", "true"])
            .env_remove("ALLOWLY_GATEWAY_TOKEN"),
        "set ALLOWLY_GATEWAY_TOKEN",
    );
}

#[test]
fn one_server_is_given_one_way_only() {
    let usage = |args: &[&str]| {
        let out =
            gateway().args(["--authorization-id", "au_1"]).args(args).env("ALLOWLY_CHECK_KEY", "k").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    };
    usage(&["--server-name", "s", "--upstream-url", "http://h:1/mcp", "--", "true"]);
    usage(&["--config", "gw.toml", "--server-name", "s"]);
    usage(&["--config", "gw.toml", "--", "true"]);
    usage(&["--upstream-url", "http://h:1/mcp"]);
}

#[test]
fn a_config_file_that_does_not_read_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, "[servers.a__b]\ncommand = [\"true\"]\n").unwrap();
    refused_at_start(
        gateway().args(["--authorization-id", "au_1", "--config"]).arg(&file),
        "no __: it separates the server from the tool",
    );
}
