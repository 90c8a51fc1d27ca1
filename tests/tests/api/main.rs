//! End-to-end tests of the REST API against a real server process.

mod sign_in;
mod refresh;
mod sessions;
mod tokens;
mod bodies;
mod delivery;
mod otp;
mod server;
