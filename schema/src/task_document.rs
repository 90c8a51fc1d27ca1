//! How a task and a user's task list are laid out in Automerge documents.
//!
//! Server, client-core and any automerge-repo client agree on this layout:
//!
//! ```text
//! task document                          root document (one per user)
//! { title: Text, notes: Text,            { tasks: { <documentId>: "automerge:<documentId>" } }
//!   done: bool, due: "YYYY-MM-DD"|null,
//!   priority: "none"|"low"|"medium"|"high",
//!   tags: { <tag>: true },
//!   createdAt, updatedAt, completedAt: Timestamp|null }
//! ```
//!
//! Text fields are collaborative text so that concurrent edits to one title
//! merge character by character; tags are a map so that two devices adding
//! tags at once both keep theirs. Readers are lenient: a JavaScript client may
//! write a plain string where we write text, or leave a field out, and a
//! document written by another client is read as well as it can be rather
//! than refused. A document is a task when it has a `title` of any type; a
//! field of the wrong type (a number for the title, a string for `done`)
//! reads as absent, and a title that cannot be read as `(untitled)`.
//! Writers only touch the fields that change, so that edits of different
//! fields on different devices never conflict.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc, ScalarValue, Value};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use crate::id::DocumentId;
use crate::task::{Notes, Priority, Tag, Tags, Task, Title};

/// Why a document cannot be read or written as a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskDocumentError {
    /// The document has no title at all, of any type: it is not a task (or
    /// not yet synced).
    #[error("the document is not a task (it has no title)")]
    NotATask,
    /// Automerge refused an operation.
    #[error("automerge error")]
    Automerge(#[from] automerge::AutomergeError),
}

/// Changes to apply to a task; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPatch {
    /// New title.
    pub title: Option<Title>,
    /// New notes.
    pub notes: Option<Notes>,
    /// Mark done or not done.
    pub done: Option<bool>,
    /// New due date; `Some(None)` clears it.
    pub due: Option<Option<NaiveDate>>,
    /// New priority.
    pub priority: Option<Priority>,
    /// Replace the tag set.
    pub tags: Option<Tags>,
}

impl TaskPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == TaskPatch::default()
    }
}

fn timestamp(at: DateTime<Utc>) -> ScalarValue {
    ScalarValue::Timestamp(at.timestamp_millis())
}

/// Writes a new task into an empty document.
pub fn write_new_task<T: Transactable>(tx: &mut T, task: &Task) -> Result<(), TaskDocumentError> {
    let title = tx.put_object(ROOT, "title", ObjType::Text)?;
    tx.splice_text(&title, 0, 0, task.title.as_str())?;
    let notes = tx.put_object(ROOT, "notes", ObjType::Text)?;
    tx.splice_text(&notes, 0, 0, task.notes.as_str())?;
    tx.put(ROOT, "done", task.done)?;
    put_due(tx, task.due)?;
    tx.put(ROOT, "priority", task.priority.as_str())?;
    let tags = tx.put_object(ROOT, "tags", ObjType::Map)?;
    for tag in task.tags.iter() {
        tx.put(&tags, tag.as_str(), true)?;
    }
    tx.put(ROOT, "createdAt", timestamp(task.created_at))?;
    tx.put(ROOT, "updatedAt", timestamp(task.updated_at))?;
    match task.completed_at {
        Some(at) => tx.put(ROOT, "completedAt", timestamp(at))?,
        None => tx.put(ROOT, "completedAt", ScalarValue::Null)?,
    }
    Ok(())
}

fn put_due<T: Transactable>(tx: &mut T, due: Option<NaiveDate>) -> Result<(), TaskDocumentError> {
    match due {
        Some(d) => tx.put(ROOT, "due", d.format("%Y-%m-%d").to_string())?,
        None => tx.put(ROOT, "due", ScalarValue::Null)?,
    }
    Ok(())
}

fn put_text<T: Transactable>(tx: &mut T, key: &str, value: &str) -> Result<(), TaskDocumentError> {
    match tx.get(ROOT, key)? {
        Some((Value::Object(ObjType::Text), id)) => tx.update_text(&id, value)?,
        _ => {
            let id = tx.put_object(ROOT, key, ObjType::Text)?;
            tx.splice_text(&id, 0, 0, value)?;
        }
    }
    Ok(())
}

/// Applies a patch, touching only the fields it names, and stamps `updatedAt`.
pub fn apply_patch<T: Transactable>(
    tx: &mut T,
    patch: &TaskPatch,
    now: DateTime<Utc>,
) -> Result<(), TaskDocumentError> {
    if !has_title(tx) {
        return Err(TaskDocumentError::NotATask);
    }
    if let Some(title) = &patch.title {
        put_text(tx, "title", title.as_str())?;
    }
    if let Some(notes) = &patch.notes {
        put_text(tx, "notes", notes.as_str())?;
    }
    if let Some(done) = patch.done {
        let was_done = matches!(tx.get(ROOT, "done")?, Some((Value::Scalar(s), _)) if *s == ScalarValue::Boolean(true));
        tx.put(ROOT, "done", done)?;
        if done && !was_done {
            tx.put(ROOT, "completedAt", timestamp(now))?;
        } else if !done {
            tx.put(ROOT, "completedAt", ScalarValue::Null)?;
        }
    }
    if let Some(due) = patch.due {
        put_due(tx, due)?;
    }
    if let Some(priority) = patch.priority {
        tx.put(ROOT, "priority", priority.as_str())?;
    }
    if let Some(tags) = &patch.tags {
        let map = match tx.get(ROOT, "tags")? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => tx.put_object(ROOT, "tags", ObjType::Map)?,
        };
        let existing: Vec<String> = tx.keys(&map).collect();
        for key in existing {
            if !tags.iter().any(|t| t.as_str() == key) {
                tx.delete(&map, key.as_str())?;
            }
        }
        for tag in tags.iter() {
            tx.put(&map, tag.as_str(), true)?;
        }
    }
    tx.put(ROOT, "updatedAt", timestamp(now))?;
    Ok(())
}

/// Whether the document has a title of any type, readable or not: what makes
/// a document a task. Deciding by the key rather than by its value keeps a
/// task that one client wrote with the wrong type a task that every reader
/// lists, shows and can delete.
fn has_title<R: ReadDoc>(doc: &R) -> bool {
    matches!(doc.get(ROOT, "title"), Ok(Some(_)))
}

fn read_string<R: ReadDoc>(doc: &R, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn read_scalar<R: ReadDoc>(doc: &R, key: &str) -> Option<ScalarValue> {
    match doc.get(ROOT, key).ok()?? {
        (Value::Scalar(s), _) => Some(s.into_owned()),
        _ => None,
    }
}

fn read_time<R: ReadDoc>(doc: &R, key: &str) -> Option<DateTime<Utc>> {
    let millis = match read_scalar(doc, key)? {
        ScalarValue::Timestamp(ms) | ScalarValue::Int(ms) => ms,
        ScalarValue::Uint(ms) => i64::try_from(ms).ok()?,
        ScalarValue::F64(ms) if ms.is_finite() => ms as i64,
        _ => return None,
    };
    Utc.timestamp_millis_opt(millis).single()
}

/// Reads a task leniently. Values out of limits are clamped (an overlong
/// title is cut, unknown priorities read as none, invalid tags are skipped)
/// and values of the wrong type read as absent (a title that is not text
/// reads as `(untitled)`), so that one odd client cannot make a task
/// unreadable for everyone. Only a document without any title is refused.
pub fn read_task<R: ReadDoc>(doc: &R) -> Result<Task, TaskDocumentError> {
    if !has_title(doc) {
        return Err(TaskDocumentError::NotATask);
    }
    let raw_title = read_string(doc, "title").unwrap_or_default();
    let clean: String = raw_title
        .chars()
        .filter(|c| !c.is_control())
        .take(Title::MAX_CHARS)
        .collect();
    let title = Title::parse(&clean)
        .unwrap_or_else(|_| Title::parse("(untitled)").expect("a valid literal"));
    let raw_notes = read_string(doc, "notes").unwrap_or_default();
    let notes = Notes::parse(&raw_notes)
        .or_else(|_| {
            let clean: String = raw_notes
                .chars()
                .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
                .take(Notes::MAX_CHARS)
                .collect();
            Notes::parse(&clean)
        })
        .unwrap_or_default();
    let done = matches!(read_scalar(doc, "done"), Some(ScalarValue::Boolean(true)));
    let due = read_string(doc, "due").and_then(|s| NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok());
    let priority = read_string(doc, "priority")
        .and_then(|p| Priority::parse(&p).ok())
        .unwrap_or_default();
    let mut tags = Vec::new();
    match doc.get(ROOT, "tags").ok().flatten() {
        Some((Value::Object(ObjType::Map), id)) => {
            for key in doc.keys(&id) {
                if let Ok(tag) = Tag::parse(&key) {
                    tags.push(tag);
                }
            }
        }
        Some((Value::Object(ObjType::List), id)) => {
            for index in 0..doc.length(&id) {
                if let Ok(Some((Value::Scalar(s), _))) = doc.get(&id, index)
                    && let ScalarValue::Str(s) = s.as_ref()
                    && let Ok(tag) = Tag::parse(s)
                {
                    tags.push(tag);
                }
            }
        }
        _ => {}
    }
    tags.truncate(Tags::MAX);
    let tags = Tags::new(tags).unwrap_or_default();
    let epoch = Utc
        .timestamp_millis_opt(0)
        .single()
        .expect("the epoch exists");
    let created_at = read_time(doc, "createdAt").unwrap_or(epoch);
    Ok(Task {
        title,
        notes,
        done,
        due,
        priority,
        tags,
        created_at,
        updated_at: read_time(doc, "updatedAt").unwrap_or(created_at),
        completed_at: if done {
            read_time(doc, "completedAt")
        } else {
            None
        },
    })
}

/// Creates the `tasks` map of a new root document. Call once per user, on
/// the server, never concurrently on devices (two devices creating the map
/// offline would each make their own, and one would hide the other).
pub fn init_root<T: Transactable>(tx: &mut T) -> Result<(), TaskDocumentError> {
    tx.put_object(ROOT, "tasks", ObjType::Map)?;
    Ok(())
}

fn tasks_map<R: ReadDoc>(doc: &R) -> Option<automerge::ObjId> {
    match doc.get(ROOT, "tasks").ok()?? {
        (Value::Object(ObjType::Map), id) => Some(id),
        _ => None,
    }
}

/// Adds a task to the root document's list.
pub fn add_to_root<T: Transactable>(tx: &mut T, task: DocumentId) -> Result<(), TaskDocumentError> {
    let map = match tasks_map(tx) {
        Some(map) => map,
        None => tx.put_object(ROOT, "tasks", ObjType::Map)?,
    };
    tx.put(&map, task.to_string(), task.url())?;
    Ok(())
}

/// Removes a task from the root document's list.
pub fn remove_from_root<T: Transactable>(
    tx: &mut T,
    task: DocumentId,
) -> Result<(), TaskDocumentError> {
    if let Some(map) = tasks_map(tx) {
        tx.delete(&map, task.to_string())?;
    }
    Ok(())
}

/// The tasks a root document lists.
pub fn tasks_in_root<R: ReadDoc>(doc: &R) -> Vec<DocumentId> {
    let Some(map) = tasks_map(doc) else {
        return Vec::new();
    };
    doc.keys(&map).filter_map(|k| k.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::AutoCommit;
    use automerge::sync::{State, SyncDoc};

    fn task(title: &str) -> Task {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        Task {
            title: Title::parse(title).unwrap(),
            notes: Notes::parse("").unwrap(),
            done: false,
            due: None,
            priority: Priority::None,
            tags: Tags::default(),
            created_at: at,
            updated_at: at,
            completed_at: None,
        }
    }

    #[test]
    fn a_written_task_reads_back() {
        let mut doc = AutoCommit::new();
        let mut t = task("buy milk");
        t.tags = Tags::new([Tag::parse("home").unwrap()]).unwrap();
        t.due = NaiveDate::from_ymd_opt(2026, 12, 1);
        write_new_task(&mut doc, &t).unwrap();
        assert_eq!(read_task(&doc).unwrap(), t);
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let mut a = AutoCommit::new();
        write_new_task(&mut a, &task("draft")).unwrap();
        let mut b = a.fork();
        let now = Utc::now();
        apply_patch(
            &mut a,
            &TaskPatch {
                title: Some(Title::parse("final").unwrap()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        apply_patch(
            &mut b,
            &TaskPatch {
                notes: Some(Notes::parse("from b").unwrap()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        a.merge(&mut b).unwrap();
        let merged = read_task(&a).unwrap();
        assert_eq!(merged.title.as_str(), "final");
        assert_eq!(merged.notes.as_str(), "from b");
    }

    #[test]
    fn completing_stamps_and_reopening_clears_completed_at() {
        let mut doc = AutoCommit::new();
        write_new_task(&mut doc, &task("x")).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap();
        apply_patch(
            &mut doc,
            &TaskPatch {
                done: Some(true),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(read_task(&doc).unwrap().completed_at, Some(now));
        apply_patch(
            &mut doc,
            &TaskPatch {
                done: Some(false),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(read_task(&doc).unwrap().completed_at, None);
    }

    #[test]
    fn plain_strings_from_other_clients_are_read_and_bad_values_clamped() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "title", "x".repeat(300)).unwrap();
        doc.put(ROOT, "priority", "urgent").unwrap();
        let tags = doc.put_object(ROOT, "tags", ObjType::List).unwrap();
        doc.insert(&tags, 0, "Work").unwrap();
        doc.insert(&tags, 1, "not a tag!").unwrap();
        let t = read_task(&doc).unwrap();
        assert_eq!(t.title.as_str().chars().count(), 200);
        assert_eq!(t.priority, Priority::None);
        assert_eq!(t.tags.iter().map(Tag::as_str).collect::<Vec<_>>(), ["work"]);
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_absent_and_the_task_stays_a_task() {
        let mut doc = AutoCommit::new();
        write_new_task(&mut doc, &task("typed")).unwrap();
        doc.put(ROOT, "title", 42_i64).unwrap();
        doc.put(ROOT, "notes", true).unwrap();
        doc.put(ROOT, "done", "yes").unwrap();
        doc.put(ROOT, "due", 20261201_i64).unwrap();
        doc.put_object(ROOT, "priority", ObjType::Map).unwrap();
        doc.put(ROOT, "tags", "home").unwrap();
        doc.put(ROOT, "createdAt", "yesterday").unwrap();
        let t = read_task(&doc).unwrap();
        assert_eq!(t.title.as_str(), "(untitled)");
        assert_eq!(t.notes.as_str(), "");
        assert!(!t.done);
        assert_eq!(t.due, None);
        assert_eq!(t.priority, Priority::None);
        assert_eq!(t.tags, Tags::default());
        assert_eq!(t.created_at.timestamp_millis(), 0);
    }

    #[test]
    fn a_title_that_is_an_object_other_than_text_reads_as_untitled() {
        for kind in [ObjType::Map, ObjType::List] {
            let mut doc = AutoCommit::new();
            doc.put_object(ROOT, "title", kind).unwrap();
            assert_eq!(read_task(&doc).unwrap().title.as_str(), "(untitled)");
        }
    }

    #[test]
    fn a_patch_replaces_a_title_of_the_wrong_type_with_text() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "title", 42_i64).unwrap();
        apply_patch(
            &mut doc,
            &TaskPatch {
                title: Some(Title::parse("readable").unwrap()),
                ..Default::default()
            },
            Utc::now(),
        )
        .unwrap();
        assert_eq!(read_task(&doc).unwrap().title.as_str(), "readable");
        assert!(matches!(
            doc.get(ROOT, "title").unwrap(),
            Some((Value::Object(ObjType::Text), _))
        ));
    }

    #[test]
    fn a_document_without_a_title_is_not_a_task() {
        assert!(matches!(
            read_task(&AutoCommit::new()),
            Err(TaskDocumentError::NotATask)
        ));
        let mut root = AutoCommit::new();
        init_root(&mut root).unwrap();
        assert!(matches!(read_task(&root), Err(TaskDocumentError::NotATask)));
        assert!(matches!(
            apply_patch(&mut root, &TaskPatch::default(), Utc::now()),
            Err(TaskDocumentError::NotATask)
        ));
    }

    #[test]
    fn the_root_lists_added_tasks_and_a_removal_wins_over_a_stale_replica() {
        let mut server = AutoCommit::new();
        init_root(&mut server).unwrap();
        let id = DocumentId::from_random_bytes([5; 16]);
        add_to_root(&mut server, id).unwrap();
        let mut stale = server.fork();
        remove_from_root(&mut server, id).unwrap();
        // The stale replica syncs its old state back: the removal stands.
        let (mut s1, mut s2) = (State::new(), State::new());
        for _ in 0..10 {
            if let Some(m) = stale.sync().generate_sync_message(&mut s1) {
                server.sync().receive_sync_message(&mut s2, m).unwrap();
            }
            if let Some(m) = server.sync().generate_sync_message(&mut s2) {
                stale.sync().receive_sync_message(&mut s1, m).unwrap();
            }
        }
        assert!(tasks_in_root(&server).is_empty());
        assert!(tasks_in_root(&stale).is_empty());
    }
}
