//! End-to-end tests of the REST API against a real server process.

mod sign_in;
