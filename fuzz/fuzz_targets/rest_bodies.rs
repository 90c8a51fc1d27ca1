//! One HTTP request (or response) body through every JSON type of the REST
//! API, then through the validation the server runs on it.
//!
//! Reaches `codeedex_schema::api::{auth, tasks}` and `problem` via serde, the
//! contact normalisation (`contact.rs`), the task-field parsers (`task.rs`)
//! and the task document writer and reader (`task_document.rs`), with these
//! properties:
//! - a normalised contact parses back from its key to itself;
//! - a `CreateTask` that validates, written to a document and read back, is
//!   the task that was validated (what `POST /v1/tasks` then returns);
//! - an `UpdateTask` that validates, applied to a task, reads back with every
//!   field it named set (what `PATCH /v1/tasks/{id}` then returns);
//! - response bodies (parsed by the client) survive a serialise → parse round
//!   trip.

#![no_main]

use std::fmt::Debug;
use std::sync::OnceLock;

use automerge::{AutoCommit, Automerge};
use chrono::{DateTime, TimeZone, Utc};
use codeedex_schema::api::auth::{
    AuditEventList, LogoutRequest, LogoutResponse, OtpAccepted, OtpRequest, RefreshRequest,
    SessionList, SignInResponse, TokenPair, UserView, VerifyRequest,
};
use codeedex_schema::api::tasks::{CreateTask, TaskHistory, TaskPage, TaskView, UpdateTask};
use codeedex_schema::contact::{Contact, ContactError};
use codeedex_schema::problem::Problem;
use codeedex_schema::task::{Notes, Priority, Tag, Tags, Task, Title};
use codeedex_schema::task_document;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|body: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<OtpRequest>(body) {
        check_contact(r.contact());
    }
    if let Ok(r) = serde_json::from_slice::<VerifyRequest>(body) {
        check_contact(r.contact());
    }
    let _ = serde_json::from_slice::<RefreshRequest>(body);
    let _ = serde_json::from_slice::<LogoutRequest>(body);
    if let Ok(r) = serde_json::from_slice::<CreateTask>(body)
        && let Ok(task) = r.to_task(created_at())
    {
        check_created(&task);
    }
    if let Ok(r) = serde_json::from_slice::<UpdateTask>(body)
        && let Ok(patch) = r.to_patch()
    {
        check_patched(&patch);
    }
    // The field types deserialise through their validating parsers.
    let _ = serde_json::from_slice::<Title>(body);
    let _ = serde_json::from_slice::<Notes>(body);
    let _ = serde_json::from_slice::<Tags>(body);
    let _ = serde_json::from_slice::<Priority>(body);

    // What the client parses from the server.
    round_trip::<OtpAccepted>(body);
    round_trip::<LogoutResponse>(body);
    round_trip::<TokenPair>(body);
    round_trip::<SignInResponse>(body);
    round_trip::<UserView>(body);
    round_trip::<SessionList>(body);
    round_trip::<AuditEventList>(body);
    round_trip::<TaskView>(body);
    round_trip::<TaskPage>(body);
    round_trip::<TaskHistory>(body);
    round_trip::<Problem>(body);
});

/// A normalised contact is a fixed point: its key parses back to itself, or
/// one account could be reached under two keys.
fn check_contact(contact: Result<Contact, ContactError>) {
    let Ok(contact) = contact else { return };
    let key = contact.key();
    let again = Contact::from_key(&key)
        .unwrap_or_else(|e| panic!("the key {key:?} of a valid contact is refused: {e}"));
    assert_eq!(
        again, contact,
        "normalisation is not idempotent for {key:?}"
    );
}

/// The creation time used for every task here, at millisecond precision as
/// documents store it.
fn created_at() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_790_000_000_123)
        .single()
        .expect("a valid instant")
}

fn check_created(task: &Task) {
    let mut doc = Automerge::new();
    doc.transact(|tx| task_document::write_new_task(tx, task))
        .expect("a valid task can be written to an empty document");
    let read = task_document::read_task(&doc).expect("a written task reads back");
    assert_eq!(&read, task, "a created task does not read back as written");
    // What the API shows is total too.
    let _ = serde_json::to_vec(&codeedex_schema::api::tasks::TaskView::new(
        codeedex_schema::id::DocumentId::from_random_bytes([7; 16]),
        &read,
    ))
    .expect("a task view serialises");
}

/// A saved document holding one ordinary task, made once.
fn prepared_task() -> &'static [u8] {
    static SAVED: OnceLock<Vec<u8>> = OnceLock::new();
    SAVED.get_or_init(|| {
        let task = Task {
            title: Title::parse("water the plants").expect("a valid title"),
            notes: Notes::parse("the ones\non the balcony").expect("valid notes"),
            done: false,
            due: None,
            priority: Priority::Low,
            tags: Tags::new([Tag::parse("home").expect("a valid tag")]).expect("one tag"),
            created_at: created_at(),
            updated_at: created_at(),
            completed_at: None,
        };
        let mut doc = Automerge::new();
        doc.transact(|tx| task_document::write_new_task(tx, &task))
            .expect("a valid task can be written");
        doc.save()
    })
}

fn check_patched(patch: &task_document::TaskPatch) {
    let mut doc = AutoCommit::load(prepared_task()).expect("the prepared task loads");
    let now = Utc
        .timestamp_millis_opt(1_790_000_100_456)
        .single()
        .expect("a valid instant");
    task_document::apply_patch(&mut doc, patch, now).expect("a valid patch applies to a task");
    let read = task_document::read_task(&doc).expect("a patched task reads back");
    if let Some(title) = &patch.title {
        assert_eq!(&read.title, title, "patched title");
    }
    if let Some(notes) = &patch.notes {
        assert_eq!(&read.notes, notes, "patched notes");
    }
    if let Some(done) = patch.done {
        assert_eq!(read.done, done, "patched done");
        assert_eq!(
            read.completed_at.is_some(),
            done,
            "completedAt follows done"
        );
    }
    if let Some(due) = patch.due {
        assert_eq!(read.due, due, "patched due date");
    }
    if let Some(priority) = patch.priority {
        assert_eq!(read.priority, priority, "patched priority");
    }
    if let Some(tags) = &patch.tags {
        assert_eq!(&read.tags, tags, "patched tags");
    }
    assert_eq!(read.updated_at, now, "updatedAt is stamped");
}

/// Whatever parses serialises, and parses back to the same value.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let json = serde_json::to_vec(&value).expect("a parsed body serialises");
    let again: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{} does not parse its own output {}: {e}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        again,
        value,
        "{} changed in a round trip",
        std::any::type_name::<T>()
    );
}
