//! End-to-end tests of the REST API against a real server process.

mod bodies;
mod delivery;
mod mail_security;
mod otp;
mod refresh;
mod server;
mod sessions;
mod sign_in;
mod tasks;
mod tokens;
