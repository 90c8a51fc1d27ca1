//! Request and response bodies of the REST API.
//!
//! Request types reject unknown fields, so a typo in a client is an error
//! rather than a silently ignored setting.

pub mod auth;
pub mod browser;
pub mod tasks;
