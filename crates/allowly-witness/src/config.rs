//! The logs a witness knows (`--config logs.toml`):
//!
//! ```toml
//! [[log]]
//! origin = "allowly/ws_123"
//! vkeys = ["allowly/ws_123+1a2b3c4d+AU..."]
//! ```
//!
//! Each log is an origin (its checkpoints' first line) and the C2SP verifier keys (type 0x01)
//! whose signature the witness requires on its checkpoints (C2SP tlog-witness: "Each witness is
//! configured with a list of supported log public keys").

use std::collections::BTreeMap;
use std::path::Path;

use allowly_receipt::note::NoteVerifier;
use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    log: Vec<LogEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogEntry {
    origin: String,
    vkeys: Vec<String>,
}

/// Origin → the log's verifier keys.
pub type Logs = BTreeMap<String, Vec<NoteVerifier>>;

/// Reads and checks the config: every origin once, non-empty, each with at least one valid vkey.
pub fn load(path: &Path) -> Result<Logs> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    parse(&text).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}

/// [`load`] without the file.
pub fn parse(text: &str) -> Result<Logs, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut logs = Logs::new();
    for l in file.log {
        if l.origin.is_empty() || l.origin.bytes().any(|b| b < 0x20) {
            return Err(format!("origin {:?}: empty or has a control character", l.origin));
        }
        if l.vkeys.is_empty() {
            return Err(format!("log {:?}: no vkeys", l.origin));
        }
        let vs = l
            .vkeys
            .iter()
            .map(|k| NoteVerifier::parse_vkey(k).map_err(|e| format!("log {:?}: vkey {k:?}: {e}", l.origin)))
            .collect::<Result<Vec<_>, _>>()?;
        if logs.insert(l.origin.clone(), vs).is_some() {
            return Err(format!("log {:?} is listed twice", l.origin));
        }
    }
    Ok(logs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    #[test]
    fn parses_and_refuses() {
        let ok = parse(&format!("[[log]]\norigin = \"o/1\"\nvkeys = [\"{VKEY}\"]\n")).unwrap();
        assert_eq!(ok["o/1"].len(), 1);
        assert!(parse("").unwrap().is_empty());
        for bad in [
            "[[log]]\norigin = \"o\"\nvkeys = []\n".to_owned(),
            format!("[[log]]\norigin = \"\"\nvkeys = [\"{VKEY}\"]\n"),
            "[[log]]\norigin = \"o\"\nvkeys = [\"nope\"]\n".to_owned(),
            format!("[[log]]\norigin = \"o\"\nvkeys = [\"{VKEY}\"]\n[[log]]\norigin = \"o\"\nvkeys = [\"{VKEY}\"]\n"),
            format!("[[log]]\norigin = \"o\"\nvkeys = [\"{VKEY}\"]\nextra = 1\n"),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
