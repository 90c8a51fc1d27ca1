//! What an app asks of the task list: new tasks, changes, filters.
//!
//! These are plain structs of strings and dates (no generics, nothing
//! borrowed), so that a C or Dart binding can build them field by field.
//! Validation happens once, here, against the limits of
//! [`codeedex_schema::task`].

use chrono::{DateTime, Days, NaiveDate, Utc};
use codeedex_schema::api::tasks::{TaskView, UpdateTask};
use codeedex_schema::task::{Notes, Priority, Tag, Tags, Task, TaskError, Title};
use codeedex_schema::task_document::TaskPatch;

use crate::error::ClientError;

/// A task to create. Only the title is required.
///
/// ```
/// use codeedex_client_core::NewTask;
/// let task = NewTask { tags: vec!["home".into()], ..NewTask::titled("buy milk") };
/// assert_eq!(task.title, "buy milk");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTask {
    /// What to do: 1 to 200 characters.
    pub title: String,
    /// Details, up to 20,000 characters.
    pub notes: Option<String>,
    /// The day it is due.
    pub due: Option<NaiveDate>,
    /// `none`, `low`, `medium` or `high`.
    pub priority: Option<String>,
    /// Up to 20 tags of `a-z 0-9 - _` (upper case is lowered).
    pub tags: Vec<String>,
}

impl NewTask {
    /// A task with just a title.
    pub fn titled(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            ..Self::default()
        }
    }

    /// The validated task, created and last updated at `now`.
    pub(crate) fn validate(&self, now: DateTime<Utc>) -> Result<Task, TaskError> {
        Ok(Task {
            title: Title::parse(&self.title)?,
            notes: self
                .notes
                .as_deref()
                .map(Notes::parse)
                .transpose()?
                .unwrap_or_default(),
            done: false,
            due: self.due,
            priority: self
                .priority
                .as_deref()
                .map(Priority::parse)
                .transpose()?
                .unwrap_or_default(),
            tags: parse_tags(&self.tags)?,
            created_at: now,
            updated_at: now,
            completed_at: None,
        })
    }
}

fn parse_tags(tags: &[String]) -> Result<Tags, TaskError> {
    tags.iter()
        .map(|t| Tag::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .and_then(Tags::new)
}

/// The validated patch of an [`UpdateTask`] (the same body as the REST
/// API's `PATCH /v1/tasks/{id}`).
pub(crate) fn patch_of(update: &UpdateTask) -> Result<TaskPatch, TaskError> {
    update.to_patch()
}

/// Which tasks to list, by completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatusFilter {
    /// Tasks not done (the default).
    #[default]
    Open,
    /// Tasks done.
    Done,
    /// Every task.
    All,
}

/// Which tasks [`Client::list_tasks`](crate::Client::list_tasks) returns.
///
/// ```
/// use codeedex_client_core::{StatusFilter, TaskFilter};
/// let overdue_at_home = TaskFilter {
///     status: StatusFilter::Open,
///     due_before: chrono::NaiveDate::from_ymd_opt(2026, 12, 1),
///     tag: Some("home".into()),
///     ..TaskFilter::default()
/// };
/// # let _ = overdue_at_home;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Open, done or all.
    pub status: StatusFilter,
    /// Only tasks due on or before this day.
    pub due_on_or_before: Option<NaiveDate>,
    /// Only tasks due strictly before this day (overdue).
    pub due_before: Option<NaiveDate>,
    /// Only tasks carrying this tag.
    pub tag: Option<String>,
    /// Only tasks whose title or notes contain this text (case-insensitive).
    pub text: Option<String>,
}

impl TaskFilter {
    /// Narrows the filter to a due window in the words of `codeedex ls
    /// --due`: `overdue` (due before `today`), or `today`, `tomorrow`,
    /// `week`, `+N` (days from today) or `YYYY-MM-DD` (due on or before
    /// that day). `today` is the caller's local date, so that every front
    /// end means the same day by the same word.
    pub fn due_within(self, words: &str, today: NaiveDate) -> Result<Self, ClientError> {
        let text = words.trim().to_ascii_lowercase();
        if text == "overdue" {
            return Ok(Self {
                due_before: Some(today),
                ..self
            });
        }
        let day = match text.as_str() {
            "today" => Some(today),
            "tomorrow" => today.checked_add_days(Days::new(1)),
            "week" | "next-week" => today.checked_add_days(Days::new(7)),
            _ => match text.strip_prefix('+').map(|n| n.trim_end_matches('d')) {
                Some(n) => n
                    .parse::<u32>()
                    .ok()
                    .and_then(|n| today.checked_add_days(Days::new(n.into()))),
                None => NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok(),
            },
        };
        match day {
            Some(day) => Ok(Self {
                due_on_or_before: Some(day),
                ..self
            }),
            None => Err(ClientError::InvalidInput(format!(
                "{words:?} is not a due window: overdue, today, tomorrow, week, +N or YYYY-MM-DD"
            ))),
        }
    }

    /// Whether a task passes the filter.
    pub fn matches(&self, task: &TaskView) -> bool {
        let status = match self.status {
            StatusFilter::Open => !task.done,
            StatusFilter::Done => task.done,
            StatusFilter::All => true,
        };
        let due_on = self
            .due_on_or_before
            .is_none_or(|limit| task.due.is_some_and(|d| d <= limit));
        let due_before = self
            .due_before
            .is_none_or(|limit| task.due.is_some_and(|d| d < limit));
        let tag = self.tag.as_deref().is_none_or(|t| {
            let t = t.trim().to_ascii_lowercase();
            task.tags.contains(&t)
        });
        let text = self.text.as_deref().is_none_or(|needle| {
            let needle = needle.to_lowercase();
            task.title.to_lowercase().contains(&needle)
                || task.notes.to_lowercase().contains(&needle)
        });
        status && due_on && due_before && tag && text
    }
}

/// Orders tasks for display: open before done, then by due date (undated
/// last), then higher priority first, then oldest first.
pub(crate) fn display_order(a: &TaskView, b: &TaskView) -> std::cmp::Ordering {
    let priority = |t: &TaskView| Priority::parse(&t.priority).unwrap_or_default();
    a.done
        .cmp(&b.done)
        .then_with(|| match (a.due, b.due) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
        .then_with(|| priority(b).cmp(&priority(a)))
        .then_with(|| a.created_at.cmp(&b.created_at))
        .then_with(|| a.id.cmp(&b.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use codeedex_schema::id::DocumentId;

    fn view(title: &str, done: bool, due: Option<NaiveDate>, tags: &[&str]) -> TaskView {
        let at = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        TaskView {
            id: DocumentId::from_random_bytes([title.len() as u8; 16]),
            title: title.into(),
            notes: String::new(),
            done,
            due,
            priority: "none".into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            created_at: at,
            updated_at: at,
            completed_at: None,
        }
    }

    #[test]
    fn a_new_task_is_validated() {
        let now = Utc::now();
        assert!(NewTask::titled("  ").validate(now).is_err());
        let bad_tag = NewTask {
            tags: vec!["two words".into()],
            ..NewTask::titled("x")
        };
        assert!(bad_tag.validate(now).is_err());
        let ok = NewTask {
            priority: Some("high".into()),
            tags: vec!["Home".into()],
            ..NewTask::titled(" x ")
        };
        let task = ok.validate(now).unwrap();
        assert_eq!(task.title.as_str(), "x");
        assert_eq!(task.priority, Priority::High);
        assert_eq!(
            task.tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
            ["home"]
        );
    }

    #[test]
    fn filters_combine() {
        let d = |day| NaiveDate::from_ymd_opt(2026, 11, day);
        let open_home = view("a", false, d(3), &["home"]);
        let done = view("bb", true, d(1), &[]);
        let undated = view("ccc", false, None, &[]);
        let f = TaskFilter::default();
        assert!(f.matches(&open_home) && !f.matches(&done) && f.matches(&undated));
        let f = TaskFilter {
            status: StatusFilter::All,
            due_on_or_before: d(3),
            ..TaskFilter::default()
        };
        assert!(f.matches(&open_home) && f.matches(&done) && !f.matches(&undated));
        let f = TaskFilter {
            due_before: d(3),
            status: StatusFilter::All,
            ..TaskFilter::default()
        };
        assert!(!f.matches(&open_home) && f.matches(&done));
        let f = TaskFilter {
            tag: Some("HOME".into()),
            ..TaskFilter::default()
        };
        assert!(f.matches(&open_home) && !f.matches(&undated));
    }

    #[test]
    fn due_windows_in_the_command_line_words() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let window = |words: &str| {
            TaskFilter::default()
                .due_within(words, today)
                .map(|f| (f.due_on_or_before, f.due_before))
        };
        let day = |m, d| NaiveDate::from_ymd_opt(2026, m, d);
        assert_eq!(window("overdue").unwrap(), (None, Some(today)));
        assert_eq!(window(" Today ").unwrap(), (Some(today), None));
        assert_eq!(window("tomorrow").unwrap(), (day(12, 1), None));
        assert_eq!(window("week").unwrap(), (day(12, 7), None));
        assert_eq!(window("+3").unwrap(), (day(12, 3), None));
        assert_eq!(window("2026-12-24").unwrap(), (day(12, 24), None));
        for bad in ["", "none", "someday", "+x", "+99999999999", "2026-13-01"] {
            assert!(window(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
