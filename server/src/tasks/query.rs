//! What a task listing asks for: filters and one page, parsed at the edge so
//! that the service never sees a limit out of range or a tag it cannot hold.

use chrono::NaiveDate;
use codeedex_schema::api::tasks::{TaskPage, TaskView};
use codeedex_schema::id::DocumentId;
use codeedex_schema::task::Tag;

/// A page size, 1 to [`PageLimit::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageLimit(usize);

impl PageLimit {
    /// The largest page.
    pub(crate) const MAX: usize = 500;
    /// The page size when none is asked for.
    pub(crate) const DEFAULT: PageLimit = PageLimit(100);

    /// `Some` when `n` is a page size we serve.
    pub(crate) fn new(n: usize) -> Option<Self> {
        (1..=Self::MAX).contains(&n).then_some(Self(n))
    }
}

/// Filters and paging of a task listing. Every filter present must pass.
#[derive(Debug, Clone)]
pub(crate) struct TaskQuery {
    /// Only done (true) or open (false) tasks.
    pub(crate) done: Option<bool>,
    /// Only tasks due on or before this day.
    pub(crate) due_before: Option<NaiveDate>,
    /// Only tasks due on or after this day.
    pub(crate) due_after: Option<NaiveDate>,
    /// Only tasks with this tag.
    pub(crate) tag: Option<Tag>,
    /// The page size.
    pub(crate) limit: PageLimit,
    /// Continue after this task id.
    pub(crate) after: Option<DocumentId>,
}

impl TaskQuery {
    /// Whether `task` passes every filter.
    fn keeps(&self, task: &TaskView) -> bool {
        self.done.is_none_or(|d| task.done == d)
            && self
                .due_before
                .is_none_or(|d| task.due.is_some_and(|due| due <= d))
            && self
                .due_after
                .is_none_or(|d| task.due.is_some_and(|due| due >= d))
            && self
                .tag
                .as_ref()
                .is_none_or(|t| task.tags.iter().any(|x| x == t.as_str()))
    }

    /// The page of `tasks` (ordered by id) that this query asks for, with
    /// the id to continue after when more tasks pass.
    pub(crate) fn page(&self, tasks: impl Iterator<Item = TaskView>) -> TaskPage {
        let mut page = Vec::new();
        let mut next = None;
        for task in tasks {
            if self
                .after
                .is_some_and(|after| task.id.as_bytes() <= after.as_bytes())
            {
                continue;
            }
            if !self.keeps(&task) {
                continue;
            }
            if page.len() == self.limit.0 {
                next = page.last().map(|t: &TaskView| t.id);
                break;
            }
            page.push(task);
        }
        TaskPage { tasks: page, next }
    }
}
