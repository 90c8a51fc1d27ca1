//! The device's replicas: every Automerge document it holds, in memory.
//!
//! Pure data: loading and saving bytes is the caller's business. The layout
//! of tasks and of the root document comes from
//! [`codeedex_schema::task_document`]; this module only knows which
//! documents are listed (in the root, or created here before the root
//! arrived: "unlisted") and how to read them as [`TaskView`]s.
//!
//! The root document is created by the server, never here: adding the
//! `tasks` map on a device that has not received the root yet would create a
//! second map that hides the first. Tasks created before the root arrives
//! wait in the unlisted set and are added by [`Replicas::list_unlisted`]
//! once it has.

use std::collections::{BTreeSet, HashMap};

use automerge::{ActorId, Automerge, ObjType, ROOT, ReadDoc, Value};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::DocumentId;
use codeedex_schema::task_document::{self, TaskDocumentError};

/// Every document of this device.
#[derive(Debug)]
pub struct Replicas {
    actor: ActorId,
    docs: HashMap<DocumentId, Automerge>,
    root: Option<DocumentId>,
    unlisted: BTreeSet<DocumentId>,
}

impl Replicas {
    /// Empty replicas writing as `actor`.
    pub fn new(actor: ActorId) -> Self {
        Self {
            actor,
            docs: HashMap::new(),
            root: None,
            unlisted: BTreeSet::new(),
        }
    }

    /// Adds a document loaded from bytes.
    pub fn load(&mut self, id: DocumentId, bytes: &[u8]) -> Result<(), automerge::AutomergeError> {
        let mut doc = Automerge::load(bytes)?;
        doc.set_actor(self.actor.clone());
        self.docs.insert(id, doc);
        Ok(())
    }

    /// The root document's id, once known.
    pub fn root(&self) -> Option<DocumentId> {
        self.root
    }

    /// Sets the root document's id (known from the server at sign-in).
    pub fn set_root(&mut self, root: Option<DocumentId>) {
        self.root = root;
    }

    /// The unlisted tasks.
    pub fn unlisted(&self) -> Vec<DocumentId> {
        self.unlisted.iter().copied().collect()
    }

    /// Marks a task as waiting for the root.
    pub fn set_unlisted(&mut self, ids: impl IntoIterator<Item = DocumentId>) {
        self.unlisted = ids.into_iter().collect();
    }

    /// A document, if held.
    pub fn get(&self, id: DocumentId) -> Option<&Automerge> {
        self.docs.get(&id)
    }

    /// A document, created empty if not held yet.
    pub fn get_or_empty(&mut self, id: DocumentId) -> &mut Automerge {
        let actor = &self.actor;
        self.docs.entry(id).or_insert_with(|| {
            let mut doc = Automerge::new();
            doc.set_actor(actor.clone());
            doc
        })
    }

    /// Whether the document is held and has any change.
    pub fn has_content(&self, id: DocumentId) -> bool {
        self.docs
            .get(&id)
            .is_some_and(|d| !d.get_heads().is_empty())
    }

    /// Ids of every document held.
    pub fn ids(&self) -> Vec<DocumentId> {
        self.docs.keys().copied().collect()
    }

    /// Whether the root has arrived with its `tasks` map.
    pub fn root_ready(&self) -> bool {
        let Some(root) = self.root.and_then(|r| self.docs.get(&r)) else {
            return false;
        };
        matches!(
            root.get(ROOT, "tasks"),
            Ok(Some((Value::Object(ObjType::Map), _)))
        )
    }

    /// The tasks in the list: those in the root, then the unlisted ones.
    pub fn listed(&self) -> Vec<DocumentId> {
        let mut ids: Vec<DocumentId> = self
            .root
            .and_then(|r| self.docs.get(&r))
            .map(task_document::tasks_in_root)
            .unwrap_or_default();
        let waiting: Vec<DocumentId> = self
            .unlisted
            .iter()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        ids.extend(waiting);
        ids
    }

    /// Whether a task is in the list.
    pub fn is_listed(&self, id: DocumentId) -> bool {
        self.unlisted.contains(&id) || self.listed_in_root(id)
    }

    fn listed_in_root(&self, id: DocumentId) -> bool {
        let Some(root) = self.root.and_then(|r| self.docs.get(&r)) else {
            return false;
        };
        task_document::tasks_in_root(root).contains(&id)
    }

    /// A listed task, if its document has arrived and reads as a task.
    pub fn task(&self, id: DocumentId) -> Option<TaskView> {
        let doc = self.docs.get(&id)?;
        let task = task_document::read_task(doc).ok()?;
        Some(TaskView::new(id, &task))
    }

    /// Every listed task whose document has arrived.
    pub fn tasks(&self) -> Vec<TaskView> {
        self.listed()
            .into_iter()
            .filter_map(|id| self.task(id))
            .collect()
    }

    /// Adds a new task to the list: to the root if it is ready, else to the
    /// unlisted set. Returns whether the root changed.
    pub fn list(&mut self, id: DocumentId) -> Result<bool, TaskDocumentError> {
        if self.root_ready() {
            let root = self.root.expect("root_ready checked it");
            self.get_or_empty(root)
                .transact(|tx| task_document::add_to_root(tx, id))
                .map_err(|f| f.error)?;
            Ok(true)
        } else {
            self.unlisted.insert(id);
            Ok(false)
        }
    }

    /// Removes a task from the list. Returns whether the root changed.
    pub fn unlist(&mut self, id: DocumentId) -> Result<bool, TaskDocumentError> {
        self.unlisted.remove(&id);
        if !self.listed_in_root(id) {
            return Ok(false);
        }
        let root = self.root.expect("listed_in_root checked it");
        self.get_or_empty(root)
            .transact(|tx| task_document::remove_from_root(tx, id))
            .map_err(|f| f.error)?;
        Ok(true)
    }

    /// Moves the unlisted tasks into the root, if it is ready. Returns the
    /// tasks moved.
    pub fn list_unlisted(&mut self) -> Result<Vec<DocumentId>, TaskDocumentError> {
        if self.unlisted.is_empty() || !self.root_ready() {
            return Ok(Vec::new());
        }
        let root = self.root.expect("root_ready checked it");
        let ids: Vec<DocumentId> = self.unlisted.iter().copied().collect();
        self.get_or_empty(root)
            .transact(|tx| {
                ids.iter()
                    .try_for_each(|id| task_document::add_to_root(tx, *id))
            })
            .map_err(|f| f.error)?;
        self.unlisted.clear();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use codeedex_schema::task::{Task, Title};

    fn server_root() -> (DocumentId, Automerge) {
        let mut doc = Automerge::new();
        doc.transact(|tx| task_document::init_root(tx)).unwrap();
        (DocumentId::from_random_bytes([9; 16]), doc)
    }

    fn new_task(replicas: &mut Replicas, byte: u8) -> DocumentId {
        let id = DocumentId::from_random_bytes([byte; 16]);
        let now = Utc::now();
        let task = Task {
            title: Title::parse("t").unwrap(),
            notes: Default::default(),
            done: false,
            due: None,
            priority: Default::default(),
            tags: Default::default(),
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        replicas
            .get_or_empty(id)
            .transact(|tx| task_document::write_new_task(tx, &task))
            .unwrap();
        id
    }

    #[test]
    fn tasks_wait_unlisted_until_the_root_arrives() {
        let mut replicas = Replicas::new(ActorId::random());
        let (root_id, root) = server_root();
        replicas.set_root(Some(root_id));
        let early = new_task(&mut replicas, 1);
        assert!(
            !replicas.list(early).unwrap(),
            "no root yet: the root must not be created here"
        );
        assert_eq!(replicas.tasks().len(), 1);
        assert!(replicas.get(root_id).is_none());

        replicas.load(root_id, &root.save()).unwrap();
        assert_eq!(replicas.list_unlisted().unwrap(), vec![early]);
        let late = new_task(&mut replicas, 2);
        assert!(replicas.list(late).unwrap());
        let mut listed = replicas.listed();
        listed.sort();
        assert_eq!(listed, vec![early, late]);
        assert!(replicas.unlisted().is_empty());
        assert!(replicas.unlist(early).unwrap());
        assert_eq!(replicas.listed(), vec![late]);
    }
}
