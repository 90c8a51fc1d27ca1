//! The end-to-end test harness.
//!
//! [`app::spawn_app`] starts the real server binary as a child process on
//! port 0 with a temporary data directory, wired to a real SMTP server
//! ([`mail_catcher`]) and a stand-in for the SMS provider's HTTP API
//! ([`sms_provider`]). Tests talk to it over real HTTP and read its log.

pub mod app;
pub mod certificates;
pub mod command_line;
pub mod disk_faults;
pub mod fault_proxy;
pub mod js_client;
pub mod mail_catcher;
pub mod sms_provider;
pub mod sync_peer;
