//! `utoipa` schemas of the scalars whose JSON form is hand-written (feature `openapi`, for
//! the server's OpenAPI document). The derived ones are on their types in [`crate::types`].

use std::borrow::Cow;

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::types::{HexHash, RawBody, Timestamp};

fn string(description: &str, pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description)).pattern(Some(pattern))
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        string(
            "UTC instant with millisecond precision, one fixed-width RFC 3339 form",
            r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$",
        )
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .into()
    }
}

impl ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

impl PartialSchema for HexHash {
    fn schema() -> RefOr<Schema> {
        string("SHA-256, 64 lower-case hex digits", "^[0-9a-f]{64}$").into()
    }
}

impl ToSchema for HexHash {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("HexHash")
    }
}

impl PartialSchema for RawBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The receipt body exactly as it is hashed and signed (RFC 8785 canonical JSON); its members are specified in docs/receipt-format.md",
            ))
            .into()
    }
}

impl ToSchema for RawBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ReceiptBody")
    }
}
