//! The sync protocol, client side, as a pure state machine.
//!
//! Events go in (the connection opened, a message arrived, documents changed
//! locally, a token was refreshed); [`Effect`]s come out (send this, save
//! that, announce this). No IO, no clock, no randomness: the async driver in
//! [`super::engine`] performs the effects. The documents themselves are
//! passed in as [`Replicas`] (memory only).
//!
//! # One connection
//!
//! 1. `join` with this device's storage id and the `codeedex/...` extensions
//!    it understands; the server answers `peer`.
//! 2. If the server offers the catch-up extension: `codeedex/catch-up-request`
//!    with the persisted cursor. The answer lists the documents that changed
//!    on the server since then; they must settle before the client is up to
//!    date, and the new cursor is persisted only once everything has.
//! 3. One sync exchange per document the device lists (the root, every task
//!    in it, tasks still waiting for the root): this attaches the document
//!    to the connection so the server pushes later changes. Sync states are
//!    restored from storage, so a document the server already has costs
//!    heads only, never its changes again.
//! 4. Documents whose local heads differ from what the server is known to
//!    have, the root, and the catch-up documents must settle (the server's
//!    heads equal ours, or the server says it does not have the document)
//!    for the status to become up to date. Without the catch-up extension,
//!    every listed document must.
//!
//! A remote change to the root announces tasks added and removed (and asks
//! for tasks not held yet); a remote change to a listed task announces it
//! changed, or added when its content arrives for the first time.

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire::{Message, PeerMetadata, message_type};

use crate::events::{ChangeOrigin, ClientEvent};
use crate::replicas::Replicas;

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this message to the server.
    Send(Message),
    /// Save this document (it changed).
    SaveDocument(DocumentId),
    /// Save this document's sync state.
    SaveSyncState(DocumentId, Vec<u8>),
    /// Save the set of unlisted tasks (it changed).
    SaveUnlisted,
    /// Save the catch-up cursor.
    SaveCursor(u64),
    /// Announce this.
    Emit(ClientEvent),
    /// The server reported a fatal error (it closes the socket next).
    ServerError(String),
}

/// The extensions this client understands, as announced in `join`.
pub(crate) const EXTENSIONS: [&str; 4] = message_type::EXTENSIONS;

#[derive(Debug)]
struct ServerPeer {
    peer_id: String,
    auth_refresh: bool,
}

/// The client side of the protocol for one device, across connections.
#[derive(Debug)]
pub struct SyncMachine {
    peer_id: String,
    storage_id: String,
    /// Per document: the sync state with the server. The persisted part
    /// (shared heads) survives reconnects; the rest is reset.
    states: HashMap<DocumentId, sync::State>,
    cursor: u64,
    joining: bool,
    server: Option<ServerPeer>,
    /// Documents synced on this connection (the server pushes their changes).
    attached: HashSet<DocumentId>,
    /// Documents that must settle before the client is up to date.
    must_settle: BTreeSet<DocumentId>,
    /// Documents the server says it does not have.
    unavailable: HashSet<DocumentId>,
    awaiting_catch_up: bool,
    /// The cursor from the catch-up answer, persisted once all settled.
    next_cursor: Option<u64>,
    /// Documents changed locally while the server had not answered our
    /// previous message: their changes go out with the reply to the
    /// server's answer, or when the driver's coalescing timer releases them.
    held: BTreeSet<DocumentId>,
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

/// Whether the server is known (from persisted state) to have every change
/// of `doc`.
fn known_synced(doc: &Automerge, state: Option<&sync::State>) -> bool {
    let heads = doc.get_heads();
    if heads.is_empty() {
        return true;
    }
    state.is_some_and(|s| sorted(s.shared_heads.clone()) == sorted(heads))
}

/// How many held documents have changes the server is not known to have,
/// given persisted sync states.
pub fn unsynced_documents(replicas: &Replicas, saved: &[(DocumentId, Vec<u8>)]) -> usize {
    let states: HashMap<DocumentId, sync::State> = saved
        .iter()
        .filter_map(|(id, bytes)| Some((*id, sync::State::decode(bytes).ok()?)))
        .collect();
    replicas
        .ids()
        .into_iter()
        .filter(|id| replicas.is_listed(*id) || Some(*id) == replicas.root())
        .filter(|id| {
            replicas
                .get(*id)
                .is_some_and(|doc| !known_synced(doc, states.get(id)))
        })
        .count()
}

impl SyncMachine {
    /// A machine for a device with `peer_id` (this process) and
    /// `storage_id` (this data directory), starting from persisted sync
    /// states and cursor. Undecodable states are dropped (the document then
    /// syncs from scratch, which is correct, only slower).
    pub fn new(
        peer_id: String,
        storage_id: String,
        saved: Vec<(DocumentId, Vec<u8>)>,
        cursor: u64,
    ) -> Self {
        let states = saved
            .into_iter()
            .filter_map(|(id, bytes)| Some((id, sync::State::decode(&bytes).ok()?)))
            .collect();
        Self {
            peer_id,
            storage_id,
            states,
            cursor,
            joining: false,
            server: None,
            attached: HashSet::new(),
            must_settle: BTreeSet::new(),
            unavailable: HashSet::new(),
            awaiting_catch_up: false,
            next_cursor: None,
            held: BTreeSet::new(),
        }
    }

    /// Whether the handshake is done on the current connection.
    pub fn is_joined(&self) -> bool {
        self.server.is_some()
    }

    /// The persisted catch-up cursor.
    #[cfg(test)]
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// A connection opened: the `join` to send.
    pub fn connected(&mut self) -> Vec<Effect> {
        self.reset_session();
        self.joining = true;
        vec![Effect::Send(Message::Join {
            sender_id: self.peer_id.clone(),
            supported_protocol_versions: vec![codeedex_schema::wire::PROTOCOL_VERSION.to_owned()],
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(self.storage_id.clone()),
                is_ephemeral: false,
                extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
            }),
        })]
    }

    /// The connection closed.
    pub fn disconnected(&mut self) {
        self.reset_session();
    }

    fn reset_session(&mut self) {
        self.joining = false;
        self.server = None;
        self.attached.clear();
        self.must_settle.clear();
        self.unavailable.clear();
        self.awaiting_catch_up = false;
        self.next_cursor = None;
        self.held.clear();
        // Keep what was established (shared heads), forget this session's
        // exchange, exactly as if loaded from storage.
        for state in self.states.values_mut() {
            *state = sync::State::decode(&state.encode()).unwrap_or_default();
        }
    }

    /// How many documents are still being exchanged (0 when up to date or
    /// not connected).
    pub fn pending(&self, replicas: &Replicas) -> usize {
        if !self.is_joined() {
            return 0;
        }
        let unsettled = self
            .must_settle
            .iter()
            .filter(|id| !self.settled(**id, replicas))
            .count();
        unsettled + usize::from(self.awaiting_catch_up)
    }

    fn settled(&self, id: DocumentId, replicas: &Replicas) -> bool {
        if self.unavailable.contains(&id) {
            return true;
        }
        let Some(state) = self.states.get(&id) else {
            return false;
        };
        let ours = replicas.get(id).map(|d| d.get_heads()).unwrap_or_default();
        state
            .their_heads
            .as_ref()
            .is_some_and(|theirs| sorted(theirs.clone()) == sorted(ours))
    }

    /// A refreshed access token: the in-place refresh to send, if the
    /// server supports it (otherwise it will close the socket at expiry and
    /// the driver reconnects with the new token).
    pub fn token_refreshed(&self, access_token: &str) -> Option<Effect> {
        let server = self.server.as_ref().filter(|s| s.auth_refresh)?;
        Some(Effect::Send(Message::AuthRefresh {
            sender_id: self.peer_id.clone(),
            target_id: server.peer_id.clone(),
            access_token: access_token.to_owned(),
        }))
    }

    /// Documents changed on this device.
    ///
    /// A document whose previous message the server has not answered yet
    /// (Automerge's sync state says so) is held: its changes go out with
    /// the reply to that answer, in one message, instead of one message per
    /// edit that the server must apply and acknowledge each. The driver
    /// releases held documents after a short bound ([`Self::release_held`]),
    /// so nothing waits for an answer that never comes.
    pub fn local_change(&mut self, ids: &[DocumentId], replicas: &mut Replicas) -> Vec<Effect> {
        if !self.is_joined() {
            return Vec::new();
        }
        let mut effects = Vec::new();
        for id in ids {
            self.must_settle.insert(*id);
            // Changes we sent and the server has not acknowledged: only then
            // is an answer on its way. A message of heads alone gets none.
            let unanswered = self.attached.contains(id)
                && self
                    .states
                    .get(id)
                    .is_some_and(|state| state.in_flight && !state.sent_hashes.is_empty());
            if unanswered {
                self.held.insert(*id);
            } else {
                effects.extend(self.sync_document(*id, replicas));
            }
        }
        effects
    }

    /// Whether some local change waits for the server's answer.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The coalescing bound passed: held documents' changes go out now.
    pub fn release_held(&mut self, replicas: &mut Replicas) -> Vec<Effect> {
        if !self.is_joined() {
            return Vec::new();
        }
        std::mem::take(&mut self.held)
            .into_iter()
            .filter_map(|id| self.sync_document(id, replicas))
            .collect()
    }

    /// The server answered after a silence long enough to make the driver
    /// ping it, so the connection is alive; yet some documents still wait
    /// for an answer to a message we sent. The server answers changes within
    /// milliseconds, so the message carrying them was lost on the way (a
    /// relay dropped it while the connection stayed open). Automerge never
    /// sends a change twice on one sync state: forget this session's record
    /// of what was sent for those documents, as a reconnect would, and sync
    /// them again.
    pub fn resend_unanswered(&mut self, replicas: &mut Replicas) -> Vec<Effect> {
        if !self.is_joined() {
            return Vec::new();
        }
        // A document in step with the server may legitimately go
        // unanswered (there is nothing to say), so only those it has not
        // confirmed count, including a new one whose first message (our
        // heads, before any change) was the one lost.
        let lost: Vec<DocumentId> = self
            .attached
            .iter()
            .copied()
            .filter(|id| {
                self.states.get(id).is_some_and(|state| state.in_flight)
                    && !self.settled(*id, replicas)
            })
            .collect();
        lost.into_iter()
            .filter_map(|id| {
                if let Some(state) = self.states.get_mut(&id) {
                    *state = sync::State::decode(&state.encode()).unwrap_or_default();
                }
                self.held.remove(&id);
                self.sync_document(id, replicas)
            })
            .collect()
    }

    /// The next sync message for a document, if there is one; attaches it.
    fn sync_document(&mut self, id: DocumentId, replicas: &mut Replicas) -> Option<Effect> {
        let server = self.server.as_ref()?.peer_id.clone();
        let first = !self.attached.contains(&id);
        let doc = replicas.get_or_empty(id);
        let empty = doc.get_heads().is_empty();
        let state = self.states.entry(id).or_default();
        let message = doc.generate_sync_message(state)?;
        self.attached.insert(id);
        let data = message.encode();
        let (sender_id, target_id, document_id) = (self.peer_id.clone(), server, id.to_string());
        // A document this device does not have is asked for; anything else
        // is offered (which is also how new documents are uploaded).
        Some(Effect::Send(if empty && first {
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            }
        } else {
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            }
        }))
    }

    /// A message from the server.
    pub fn receive(&mut self, message: Message, replicas: &mut Replicas) -> Vec<Effect> {
        let mut effects = Vec::new();
        match message {
            Message::Peer {
                sender_id,
                peer_metadata,
                ..
            } if self.joining => {
                self.joining = false;
                let metadata = peer_metadata.unwrap_or_default();
                let catch_up = metadata.supports(message_type::CATCH_UP_REQUEST);
                self.server = Some(ServerPeer {
                    peer_id: sender_id.clone(),
                    auth_refresh: metadata.supports(message_type::AUTH_REFRESH),
                });
                if catch_up {
                    self.awaiting_catch_up = true;
                    effects.push(Effect::Send(Message::CatchUpRequest {
                        sender_id: self.peer_id.clone(),
                        target_id: sender_id,
                        cursor: self.cursor,
                    }));
                }
                let mut ids: Vec<DocumentId> = replicas.root().into_iter().collect();
                ids.extend(replicas.listed());
                for id in &ids {
                    let unsynced = replicas
                        .get(*id)
                        .is_some_and(|d| !known_synced(d, self.states.get(id)));
                    if !catch_up || unsynced || Some(*id) == replicas.root() {
                        self.must_settle.insert(*id);
                    }
                }
                for id in ids {
                    effects.extend(self.sync_document(id, replicas));
                }
            }
            Message::Sync {
                document_id, data, ..
            }
            | Message::Request {
                document_id, data, ..
            } => {
                if let Ok(id) = document_id.parse::<DocumentId>() {
                    self.receive_sync(id, &data, replicas, &mut effects);
                }
            }
            Message::DocUnavailable { document_id, .. } => {
                if let Ok(id) = document_id.parse::<DocumentId>() {
                    self.unavailable.insert(id);
                    self.attached.insert(id);
                }
            }
            Message::CatchUpResponse {
                document_ids,
                cursor,
                ..
            } if self.awaiting_catch_up => {
                self.awaiting_catch_up = false;
                self.next_cursor = Some(cursor);
                for id in document_ids
                    .iter()
                    .filter_map(|d| d.parse::<DocumentId>().ok())
                {
                    if replicas.is_listed(id) || Some(id) == replicas.root() {
                        self.must_settle.insert(id);
                        if !self.attached.contains(&id) {
                            effects.extend(self.sync_document(id, replicas));
                        }
                    }
                }
            }
            Message::Error { message } => effects.push(Effect::ServerError(message)),
            // Auth-accepted needs no action; the rest is not ours to answer.
            _ => {}
        }
        if self.is_joined()
            && self.next_cursor.is_some()
            && self.pending(replicas) == 0
            && let Some(cursor) = self.next_cursor.take()
        {
            self.cursor = cursor;
            effects.push(Effect::SaveCursor(cursor));
        }
        effects
    }

    fn receive_sync(
        &mut self,
        id: DocumentId,
        data: &[u8],
        replicas: &mut Replicas,
        effects: &mut Vec<Effect>,
    ) {
        let Ok(message) = sync::Message::decode(data) else {
            tracing::warn!(doc = %id, "the server sent an undecodable sync message; ignored");
            return;
        };
        let is_root = Some(id) == replicas.root();
        let task_before = replicas.task(id);
        let root_before: BTreeSet<DocumentId> = if is_root {
            replicas.listed().into_iter().collect()
        } else {
            BTreeSet::new()
        };
        self.attached.insert(id);
        self.unavailable.remove(&id);
        let state = self.states.entry(id).or_default();
        let doc = replicas.get_or_empty(id);
        let heads_before = doc.get_heads();
        if let Err(e) = doc.receive_sync_message(state, message) {
            tracing::warn!(doc = %id, error = %e, "a sync message from the server could not be applied; ignored");
            return;
        }
        let changed = doc.get_heads() != heads_before;
        if changed {
            effects.push(Effect::SaveDocument(id));
        }
        // The reply carries every local change made since, held ones too.
        self.held.remove(&id);
        if let Some(reply) = doc.generate_sync_message(state) {
            effects.push(Effect::Send(Message::Sync {
                sender_id: self.peer_id.clone(),
                target_id: self
                    .server
                    .as_ref()
                    .map(|s| s.peer_id.clone())
                    .unwrap_or_default(),
                document_id: id.to_string(),
                data: reply.encode(),
            }));
        }
        effects.push(Effect::SaveSyncState(id, state.encode()));
        if !changed {
            return;
        }
        if is_root {
            self.root_changed(root_before, replicas, effects);
        } else if replicas.is_listed(id) {
            match (task_before, replicas.task(id)) {
                (None, Some(task)) => effects.push(Effect::Emit(ClientEvent::TaskAdded {
                    task,
                    origin: ChangeOrigin::Remote,
                })),
                (Some(before), Some(task)) if before != task => {
                    effects.push(Effect::Emit(ClientEvent::TaskChanged {
                        task,
                        origin: ChangeOrigin::Remote,
                    }))
                }
                _ => {}
            }
        }
    }

    fn root_changed(
        &mut self,
        before: BTreeSet<DocumentId>,
        replicas: &mut Replicas,
        effects: &mut Vec<Effect>,
    ) {
        let moved = match replicas.list_unlisted() {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(error = %e, "cannot add waiting tasks to the root document");
                Vec::new()
            }
        };
        if !moved.is_empty() {
            let root = replicas.root().expect("the root changed, so it is known");
            effects.push(Effect::SaveUnlisted);
            effects.push(Effect::SaveDocument(root));
            self.must_settle.insert(root);
            effects.extend(self.sync_document(root, replicas));
        }
        let after: BTreeSet<DocumentId> = replicas.listed().into_iter().collect();
        for id in after.difference(&before) {
            match replicas.task(*id) {
                Some(task) => effects.push(Effect::Emit(ClientEvent::TaskAdded {
                    task,
                    origin: ChangeOrigin::Remote,
                })),
                None => {
                    self.must_settle.insert(*id);
                    if !self.attached.contains(id) {
                        effects.extend(self.sync_document(*id, replicas));
                    }
                }
            }
        }
        for id in before.difference(&after) {
            effects.push(Effect::Emit(ClientEvent::TaskRemoved {
                id: *id,
                origin: ChangeOrigin::Remote,
            }));
        }
    }
}

/// Whether a root document lists a task (for tests and callers holding a
/// document rather than [`Replicas`]).
#[cfg(test)]
fn lists(root: &Automerge, id: DocumentId) -> bool {
    codeedex_schema::task_document::tasks_in_root(root).contains(&id)
}

#[cfg(test)]
mod tests;
