//! A task's history: which fields each change in its event log touched, by
//! whom and when, found by replaying the log into a fresh document and
//! diffing the heads before and after each change.

use automerge::{Automerge, AutomergeError, PatchAction, Prop, ROOT};
use codeedex_schema::api::tasks::{HistoryEntry, TaskHistory};

use crate::store::EventRecord;

/// Replays `events` (one document's, in log order) into its history.
pub(crate) fn replay(events: Vec<EventRecord>) -> Result<TaskHistory, AutomergeError> {
    let mut doc = Automerge::new();
    let mut entries = Vec::with_capacity(events.len());
    for event in events {
        let before = doc.get_heads();
        doc.load_incremental(&event.change)?;
        let after = doc.get_heads();
        let mut fields: Vec<String> = doc
            .diff(&before, &after)
            .into_iter()
            .filter_map(|patch| match patch.path.first() {
                Some((_, Prop::Map(key))) => Some(key.clone()),
                Some(_) => None,
                None if patch.obj == ROOT => match patch.action {
                    PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key),
                    _ => None,
                },
                None => None,
            })
            .collect();
        fields.sort();
        fields.dedup();
        entries.push(HistoryEntry {
            seq: event.seq,
            at: event.at,
            user_id: event.user,
            session_id: event.session,
            fields,
        });
    }
    Ok(TaskHistory { entries })
}
