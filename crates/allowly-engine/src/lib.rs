//! Allowly's engine: workspaces, authorizations, decisions, one actor per workspace, and the
//! signing pipeline. This first part holds the decision table (`decide`), a pure function.

pub mod decide;
