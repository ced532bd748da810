//! Logging of the allowly binaries: `tracing` to stderr, as text (the default) or as one JSON
//! object per line (`ALLOWLY_LOG_FORMAT=json`, read by `allowly` and `allowly-signer` alike, so
//! an embedded signer's lines match its server's), filtered by an `EnvFilter` variable of the
//! binary's (`ALLOWLY_LOG`, `ALLOWLY_SIGNER_LOG`; default `info`).
//!
//! In `allowly serve`, every request runs in a `request` span carrying its `request_id` (the client's valid
//! `Request-Id`, else a generated one, echoed in the answer), so every line logged while serving
//! it names the request. Work the engine does later on its own tasks (a workspace actor, the
//! signing pipeline) is not inside that span. The access log — one line per answered request
//! with method, route template, status, duration and request id (target `allowly::access`,
//! level info) — is off unless asked for (`ALLOWLY_LOG=info,allowly::access=info`): at tens of
//! thousands of checks a second it is the largest cost a log could add.
//!
//! Nothing here logs a header, a body, a query or a path: the route *template* is logged,
//! never the path (it holds ids), and secrets only ever arrive in headers and bodies.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The access log's target.
pub const ACCESS: &str = "allowly::access";

/// The server's filter when `ALLOWLY_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,allowly::access=off";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// From `ALLOWLY_LOG_FORMAT` (`text`, `json`); anything else is an error, said at start.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("ALLOWLY_LOG_FORMAT").as_deref() {
            Err(_) | Ok("") | Ok("text") => Ok(Self::Text),
            Ok("json") => Ok(Self::Json),
            Ok(other) => Err(format!("ALLOWLY_LOG_FORMAT={other:?}: expected text or json")),
        }
    }
}

/// Installs the process's subscriber: filter from `filter_var`, else `default_filter`.
pub fn init(format: LogFormat, filter_var: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(filter_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.fmt_fields(JsonFields).event_format(JsonLines).init(),
    }
}

/// Collects fields into a JSON object.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

/// Span fields as a JSON object's text (kept per span, then copied into each line).
struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut w: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut map = serde_json::Map::new();
        fields.record(&mut JsonVisitor(&mut map));
        let text = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        w.write_str(&text)
    }
}

/// One JSON object per event: `ts` (RFC 3339, UTC, ms), `level`, `target`, the event's fields
/// (`message` among them), and the fields of the spans it happened in (inner spans win).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut map = serde_json::Map::new();
        map.insert("ts".into(), now_rfc3339().into());
        map.insert("level".into(), event.metadata().level().as_str().into());
        map.insert("target".into(), event.metadata().target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else { continue };
                if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(fields) {
                    map.extend(m);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut map));
        let text = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(w, "{text}")
    }
}

/// Now as the receipt format writes times (`YYYY-MM-DDTHH:MM:SS.sssZ`, UTC): one clock format.
fn now_rfc3339() -> String {
    allowly_receipt::types::Timestamp::from_unix_ms(allowly_receipt::types::now_ms())
        .map(|t| t.to_string())
        .unwrap_or_default()
}
