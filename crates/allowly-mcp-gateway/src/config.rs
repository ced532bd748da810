//! The config file naming several MCP servers behind one gateway (`--config`, TOML,
//! docs/mcp-gateway.md):
//!
//! ```toml
//! [servers.github]
//! command = ["npx", "-y", "@modelcontextprotocol/server-github"]
//!
//! [servers.crm]
//! url = "http://127.0.0.1:9000/mcp"
//!
//! [servers.billing]
//! url = "https://billing.internal:8443/mcp"
//! ca_file = "/etc/allowly/internal-ca.pem"
//! ```
//!
//! Each table under `servers` is one server: its name is the `<server>` of its scopes and of its
//! tools' names (`<server>__<tool>`), and it has either a `command` (started by the gateway, MCP
//! over stdio) or a `url` (MCP over streamable HTTP, `http://` or `https://`; an `https://` one
//! may name the PEM file of the private CA its certificate chains to, `tls`).

use std::collections::BTreeMap;
use std::path::Path;

use allowly_tls::CaFile;
use serde::Deserialize;

use crate::error::GatewayError;
use crate::proxy::{Reach, Token, Upstream};
use crate::scope::segment;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    servers: BTreeMap<String, Server>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Server {
    command: Option<Vec<String>>,
    url: Option<String>,
    /// With `url`: the environment variable holding the server's bearer token (the file names
    /// the variable, never the secret).
    token_env: Option<String>,
    /// With an `https://` url: the CA file its certificate must chain to (relative to the
    /// directory the gateway runs in).
    ca_file: Option<std::path::PathBuf>,
}

/// The servers of a config file, in name order; `env` looks up the variables `token_env` names.
pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Vec<Upstream>, GatewayError> {
    let bad = |e: String| GatewayError::Config(format!("--config: {e}"));
    let file: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if file.servers.is_empty() {
        return Err(bad("no [servers.NAME] table".into()));
    }
    file.servers
        .into_iter()
        .map(|(name, server)| {
            check_name(&name).map_err(|why| bad(format!("server name {name:?} {why}")))?;
            let token = match server.token_env {
                Some(_) if server.url.is_none() => {
                    return Err(bad(format!("servers.{name}.token_env is for a server reached by url")))
                }
                Some(var) => Some(Token(env(&var).ok_or_else(|| {
                    bad(format!("servers.{name}.token_env: the environment variable {var} is not set"))
                })?)),
                None => None,
            };
            let reach = match (server.command, server.url) {
                (Some(_), None) if server.ca_file.is_some() => {
                    return Err(bad(format!("servers.{name}.ca_file is for a server reached by an https:// url")))
                }
                (Some(command), None) => {
                    let mut command = command.into_iter();
                    let program = command.next().ok_or_else(|| bad(format!("servers.{name}.command is empty")))?;
                    Reach::Command { program, args: command.collect() }
                }
                (None, Some(url)) => {
                    let url = upstream_url(&url).map_err(|e| bad(format!("servers.{name}.url {e}")))?;
                    check_ca(&url, server.ca_file.as_deref())
                        .map_err(|e| bad(format!("servers.{name}.ca_file {e}")))?;
                    let ca = server.ca_file.as_deref().map(CaFile::read).transpose()?;
                    Reach::Url { url, token, ca }
                }
                _ => return Err(bad(format!("servers.{name} needs exactly one of command and url"))),
            };
            Ok(Upstream { name, reach })
        })
        .collect()
}

/// A server's name must be its own scope segment (so `mcp.<server>.<tool>` names it as
/// written), which also keeps `__` out of it and `_` off its ends: the first `__` of a listed
/// tool name always ends the server's name. No `:` either (not in MCP tool names).
fn check_name(name: &str) -> Result<(), &'static str> {
    if segment(name).as_deref() != Some(name) || name.contains(':') {
        return Err("must be lowercase letters, digits, - and single _ between them (no __: it separates the server from the tool)");
    }
    Ok(())
}

/// An upstream MCP endpoint: `http://…` or `https://…`.
pub fn upstream_url(url: &str) -> Result<String, String> {
    match url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) {
        Some(rest) if !rest.is_empty() => Ok(url.to_owned()),
        _ => Err(format!("must be http(s)://HOST:PORT/PATH, not {url:?}")),
    }
}

/// A CA file goes with an `https://` URL only: over `http://` it would check nothing, and
/// saying so beats an operator believing the server is authenticated.
pub fn check_ca(url: &str, ca_file: Option<&Path>) -> Result<(), String> {
    match ca_file {
        Some(path) if !url.starts_with("https://") => {
            Err(format!("{} is for an https:// url, not {url:?}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn servers_are_read_in_name_order_with_their_command_or_url() {
        let servers = parse(
            "[servers.shop]\ncommand = [\"python3\", \"server.py\"]\n[servers.crm]\nurl = \"http://127.0.0.1:9/mcp\"\n",
            |_| None,
        )
        .unwrap();
        assert_eq!(
            servers,
            vec![
                Upstream {
                    name: "crm".into(),
                    reach: Reach::Url { url: "http://127.0.0.1:9/mcp".into(), token: None, ca: None }
                },
                Upstream {
                    name: "shop".into(),
                    reach: Reach::Command { program: "python3".into(), args: vec!["server.py".into()] }
                },
            ]
        );
    }

    #[test]
    fn a_server_needs_one_way_to_reach_it_and_a_name_that_routes_unambiguously() {
        let err = |text: &str| parse(text, |_| None).unwrap_err().to_string();
        assert!(err("[servers.a]\n").contains("exactly one of command and url"));
        assert!(err("[servers.a]\ncommand = [\"x\"]\nurl = \"http://h:1/mcp\"\n").contains("exactly one"));
        assert!(err("[servers.a]\ncommand = []\n").contains("command is empty"));
        assert!(err("[servers.a]\nurl = \"ftp://h/mcp\"\n").contains("must be http(s)://"));
        assert!(parse("[servers.a]\nurl = \"https://h/mcp\"\n", |_| None).is_ok());
        for name in ["a__b", "a_", "_a", "GitHub", "a:b", "a.b"] {
            assert!(err(&format!("[servers.\"{name}\"]\ncommand = [\"x\"]\n")).contains("no __"), "{name}");
        }
        assert!(parse("[servers.my-server_2]\ncommand = [\"x\"]\n", |_| None).is_ok());
        assert!(err("[servers.a]\ncommand = [\"x\"]\ntoken_env = \"T\"\n").contains("reached by url"));
        assert!(err("[servers.a]\nurl = \"http://h:1/mcp\"\ntoken_env = \"UNSET\"\n").contains("UNSET is not set"));
        assert!(err("[servers.a]\ncommand = [\"x\"]\nenv = 1\n").contains("unknown field"));
        assert!(err("servers = {}\n").contains("no [servers.NAME]"));
        assert!(err("[servers.a]\ncommand = [\"x\"]\nca_file = \"ca.pem\"\n").contains("https:// url"));
        assert!(
            err("[servers.a]\nurl = \"https://h/mcp\"\nca_file = \"/no/such/ca.pem\"\n").contains("/no/such/ca.pem")
        );
        let ca = Path::new("ca.pem");
        assert!(check_ca("http://h/mcp", Some(ca)).unwrap_err().contains("ca.pem is for an https:// url"));
        assert!(check_ca("https://h/mcp", Some(ca)).is_ok());
    }

    /// The token comes from the variable the file names, and no `Debug` of the result shows it.
    #[test]
    fn a_servers_token_is_read_from_the_named_variable_and_never_shown() {
        let env = |var: &str| (var == "CRM_TOKEN").then(|| "s3cret-value".to_owned());
        let servers = parse("[servers.crm]\nurl = \"http://h:1/mcp\"\ntoken_env = \"CRM_TOKEN\"\n", env).unwrap();
        assert_eq!(
            servers[0].reach,
            Reach::Url { url: "http://h:1/mcp".into(), token: Some(Token("s3cret-value".into())), ca: None }
        );
        assert!(!format!("{servers:?}").contains("s3cret"), "{servers:?}");
    }
}
