//! What one `tools/call` becomes: the check, then the person's step if Allowly asks for one,
//! and the verdict the proxy acts on (forward the call, or answer with a tool error). Every
//! verdict carries the receipt ids of the decisions it rests on, which go into the result's
//! `_meta` (`allowly/receipt_ids`, in order; `allowly/decision`, `allowly/scope`).

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::allowly::{Allowly, Final};
use crate::error::GatewayError;
use crate::scope::mcp_scope;

/// What the gateway was told to do (the command line and the environment).
#[derive(Debug, Clone)]
pub struct Policy {
    pub authorization_id: String,
    /// Role `check`.
    pub check_key: String,
    /// Role `read`: waiting for an escalation's answer needs it.
    pub read_key: Option<String>,
    /// Role `admin`: answering a confirmation with what the user said through MCP elicitation.
    pub answer_key: Option<String>,
    /// Who the user is, in the answer's `by`.
    pub user: String,
    pub escalation_wait: Duration,
    /// Allowly unreachable: refuse (false, the default) or let the call through unchecked.
    pub allow_unreachable: bool,
    /// `(tool or "*", template)`: the check's resource, from the call's arguments; the first
    /// whose tool matches the name the client called (`<server>__<tool>` with several servers)
    /// applies, none: no resource.
    pub resources: Vec<(String, String)>,
}

/// `template` with every `{name}` replaced by the call's argument `name` (a string or a
/// number); `Err(name)` when the arguments have no such string or number (the call is refused:
/// checking it without its resource would check something else).
pub fn render(template: &str, arguments: &Value) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else { return Err(rest[open..].to_owned()) };
        let name = &rest[open + 1..open + close];
        match &arguments[name] {
            Value::String(v) => out.push_str(v),
            Value::Number(n) => out.push_str(&n.to_string()),
            _ => return Err(name.to_owned()),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the proxy does with the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Forward it; `meta` goes into the result.
    Forward { meta: Map<String, Value> },
    /// Answer with a tool error (`isError: true`) saying why; nothing reaches the server.
    Refuse { text: String, meta: Map<String, Value> },
}

/// The person's answer to a confirmation, asked through the MCP client (elicitation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAnswer {
    Approved,
    Declined,
    /// The client cannot ask its user (no elicitation capability), or asking failed.
    CannotAsk,
}

fn meta(scope: &str, decision: &str, receipts: &[Option<String>]) -> Map<String, Value> {
    let ids: Vec<&String> = receipts.iter().flatten().collect();
    let mut m = Map::new();
    m.insert("allowly/scope".into(), json!(scope));
    m.insert("allowly/decision".into(), json!(decision));
    m.insert("allowly/receipt_ids".into(), json!(ids));
    m
}

impl Policy {
    /// Decides one call of `server`'s `tool` (which the client called `listed`) with
    /// `arguments`: scope `mcp.<server>.<tool>`; `ask` asks the user (MCP elicitation) with a
    /// message and gives their answer.
    pub async fn decide<F, Fut>(
        &self,
        allowly: &Allowly,
        server: &str,
        tool: &str,
        listed: &str,
        arguments: &Value,
        ask: F,
    ) -> Verdict
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = UserAnswer>,
    {
        let Some(scope) = mcp_scope(server, tool) else {
            return Verdict::Refuse {
                text: format!(
                    "Allowly: the tool name {tool:?} of server {server:?} maps to no scope (docs/tool-scopes.md)"
                ),
                meta: Map::new(),
            };
        };
        let template = self.resources.iter().find(|(t, _)| t == listed || t == "*").map(|(_, template)| template);
        let resource = match template.map(|t| render(t, arguments)).transpose() {
            Ok(r) => r,
            Err(name) => {
                return Verdict::Refuse {
                    text: format!("Allowly: the resource of {tool} needs the argument {name:?}, which the call lacks"),
                    meta: meta(&scope, "error", &[]),
                }
            }
        };
        let context = json!({ "tool": tool, "server": server, "arguments": arguments });
        let check =
            match allowly.check(&self.check_key, &self.authorization_id, &scope, resource.as_deref(), &context).await {
                Ok(c) => c,
                Err(e) => return self.failed(&scope, e),
            };
        let first = check.receipt_id.clone();
        match check.decision.as_str() {
            "allow" => Verdict::Forward { meta: meta(&scope, "allow", &[first]) },
            "deny" => Verdict::Refuse {
                text: format!("Allowly denied {scope}: {}{}", check.reason, receipt_note(&first)),
                meta: meta(&scope, "deny", &[first]),
            },
            "confirm" => {
                let nonce = check.nonce.clone().unwrap_or_default();
                let Some(answer_key) = self.answer_key.as_deref() else {
                    return self.needs_confirmation(
                        &scope,
                        &nonce,
                        first,
                        "the gateway has no key to record the answer",
                    );
                };
                let shown = format!(
                    "Allowly asks you to confirm: call the tool {tool} of {server} ({scope}) with {}",
                    serde_json::to_string(arguments).unwrap_or_default()
                );
                let approved = match ask(shown.clone()).await {
                    UserAnswer::Approved => true,
                    UserAnswer::Declined => false,
                    UserAnswer::CannotAsk => {
                        return self.needs_confirmation(&scope, &nonce, first, "the MCP client cannot ask its user")
                    }
                };
                match allowly.answer_confirmation(answer_key, &nonce, approved, &self.user, &shown).await {
                    Ok(f) => self.after_person(&scope, first, f, &format!("confirmation {nonce}")),
                    Err(e) => self.failed(&scope, e),
                }
            }
            "escalate" => {
                let id = check.escalation_id.clone().unwrap_or_default();
                let Some(read_key) = self.read_key.as_deref() else {
                    return Verdict::Refuse {
                        text: format!("Allowly escalated {scope} to an approver (escalation {id}); the gateway has no read key to wait for the answer"),
                        meta: meta(&scope, "escalate", &[first]),
                    };
                };
                match allowly.wait_escalation(read_key, &id, self.escalation_wait).await {
                    Ok(f) => self.after_person(&scope, first, f, &format!("escalation {id}")),
                    Err(e) => self.failed(&scope, e),
                }
            }
            other => Verdict::Refuse {
                text: format!("Allowly answered an unknown decision {other:?} for {scope}"),
                meta: meta(&scope, other, &[first]),
            },
        }
    }

    fn after_person(&self, scope: &str, first: Option<String>, f: Final, step: &str) -> Verdict {
        if f.pending {
            return Verdict::Refuse {
                text: format!(
                    "Allowly: {step} for {scope} is not answered after {:?}; call again once it is",
                    self.escalation_wait
                ),
                meta: meta(scope, "escalate", &[first]),
            };
        }
        let receipts = [first, f.receipt_id.clone()];
        if f.allowed {
            Verdict::Forward { meta: meta(scope, "allow", &receipts) }
        } else {
            Verdict::Refuse {
                text: format!("Allowly denied {scope} ({step}): {}{}", f.reason, receipt_note(&f.receipt_id)),
                meta: meta(scope, "deny", &receipts),
            }
        }
    }

    fn needs_confirmation(&self, scope: &str, nonce: &str, first: Option<String>, why: &str) -> Verdict {
        Verdict::Refuse {
            text: format!(
                "Allowly needs the user's confirmation of {scope} (confirmation nonce {nonce}) and {why}: answer it with POST /v1/confirmations/{nonce}"
            ),
            meta: {
                let mut m = meta(scope, "confirm", &[first]);
                m.insert("allowly/confirmation_nonce".into(), json!(nonce));
                m
            },
        }
    }

    fn failed(&self, scope: &str, e: GatewayError) -> Verdict {
        match e {
            GatewayError::Unreachable(_) if self.allow_unreachable => {
                let mut m = meta(scope, "unchecked", &[]);
                m.insert("allowly/unchecked".into(), json!(e.to_string()));
                Verdict::Forward { meta: m }
            }
            e => Verdict::Refuse {
                text: format!("Allowly could not decide {scope}, so the call is refused: {e}"),
                meta: meta(scope, "error", &[]),
            },
        }
    }
}

fn receipt_note(id: &Option<String>) -> String {
    id.as_deref().map(|id| format!(" (receipt {id})")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resources_are_rendered_from_string_and_number_arguments_only() {
        let args = json!({ "owner": "acme", "repo": "shop", "n": 7, "flag": true });
        assert_eq!(render("github:{owner}/{repo}#{n}", &args), Ok("github:acme/shop#7".into()));
        assert_eq!(render("plain", &args), Ok("plain".into()));
        assert_eq!(render("x:{missing}", &args), Err("missing".into()));
        assert_eq!(render("x:{flag}", &args), Err("flag".into()));
        assert_eq!(render("x:{owner", &args), Err("{owner".into()));
    }
}
