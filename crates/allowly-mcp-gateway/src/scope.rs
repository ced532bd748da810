//! The canonical mapping from tool names to scopes (docs/tool-scopes.md), the same as the SDKs'
//! and the Claude Code hook's: a tool `T` of the server the gateway calls `S` is `mcp.<S>.<T>`,
//! each name made one segment of `[a-z0-9_:-]`. The vectors all implementations pass are
//! `clients/tool-scopes.json` (tested here too).

/// Longest scope Allowly accepts.
pub const MAX_SCOPE: usize = 128;

/// One name as one scope segment: an `_` before every ASCII capital that follows a lowercase
/// letter or a digit, or that follows a capital and comes before a lowercase letter; ASCII
/// lowercased; any other character outside `[a-z0-9_:-]` is `_`; runs of `_` made one and
/// trimmed. `None` when nothing is left.
pub fn segment(name: &str) -> Option<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next = chars.get(i + 1).copied();
            let boundary = prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()));
            if boundary {
                out.push('_');
            }
        }
        match c {
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            'a'..='z' | '0'..='9' | ':' | '-' => out.push(c),
            _ => out.push('_'),
        }
    }
    let mut seg = String::with_capacity(out.len());
    for c in out.chars() {
        if !(c == '_' && seg.ends_with('_')) {
            seg.push(c);
        }
    }
    let seg = seg.trim_matches('_');
    (!seg.is_empty()).then(|| seg.to_owned())
}

/// `mcp.<server>.<tool>`, or `None` (a name with nothing left, or over 128 characters: the
/// call is refused, never checked under another name).
pub fn mcp_scope(server: &str, tool: &str) -> Option<String> {
    let scope = format!("mcp.{}.{}", segment(server)?, segment(tool)?);
    (scope.len() <= MAX_SCOPE).then_some(scope)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/tool-scopes.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("clients/tool-scopes.json")).expect("JSON")
    }

    fn opt(v: &Value) -> Option<String> {
        v.as_str().map(str::to_owned)
    }

    #[test]
    fn segments_are_the_shared_vectors() {
        for v in vectors()["segment"].as_array().expect("segment") {
            assert_eq!(segment(v[0].as_str().expect("name")), opt(&v[1]), "{v}");
        }
    }

    #[test]
    fn mcp_scopes_are_the_shared_vectors() {
        let vectors = vectors();
        let all = vectors["mcp"].as_array().expect("mcp");
        assert!(all.len() >= 5);
        for v in all {
            assert_eq!(mcp_scope(v[0].as_str().expect("server"), v[1].as_str().expect("tool")), opt(&v[2]), "{v}");
        }
    }
}
