//! The task model: what one task document holds, with its limits.
//!
//! Each field type validates on construction, so a `Task` value is always
//! within limits. The limits are generous for people and tight enough that a
//! hostile client cannot make one task expensive to store or sync.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// Why a task field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The title is empty after trimming.
    #[error("title must not be empty")]
    EmptyTitle,
    /// A text field is too long.
    #[error("{field} is longer than {max} characters")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The limit, in characters.
        max: usize,
    },
    /// A text field holds control characters.
    #[error("{0} must not contain control characters")]
    ControlCharacters(&'static str),
    /// A tag has characters outside `a-z 0-9 - _`, or is empty.
    #[error("tag {0:?} must be 1 to 32 characters of a-z, 0-9, '-' or '_'")]
    BadTag(String),
    /// More tags than allowed.
    #[error("a task has at most {0} tags")]
    TooManyTags(usize),
    /// A priority name that is not one of the four.
    #[error("priority must be one of none, low, medium, high")]
    BadPriority,
}

fn has_control(s: &str, allow_newlines: bool) -> bool {
    s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
}

/// A task's title: 1 to 200 characters, trimmed, one line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Title(String);

impl Title {
    /// The longest title, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Trims and validates a title.
    pub fn parse(input: &str) -> Result<Self, TaskError> {
        let t = input.trim();
        if t.is_empty() {
            return Err(TaskError::EmptyTitle);
        }
        if t.chars().count() > Self::MAX_CHARS {
            return Err(TaskError::TooLong {
                field: "title",
                max: Self::MAX_CHARS,
            });
        }
        if has_control(t, false) {
            return Err(TaskError::ControlCharacters("title"));
        }
        Ok(Self(t.to_owned()))
    }

    /// The title text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free-form notes: up to 20,000 characters, newlines and tabs allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Notes(String);

impl Notes {
    /// The longest notes, in characters.
    pub const MAX_CHARS: usize = 20_000;

    /// Validates notes (kept as written, not trimmed).
    pub fn parse(input: &str) -> Result<Self, TaskError> {
        if input.chars().count() > Self::MAX_CHARS {
            return Err(TaskError::TooLong {
                field: "notes",
                max: Self::MAX_CHARS,
            });
        }
        if has_control(input, true) {
            return Err(TaskError::ControlCharacters("notes"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The notes text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag: 1 to 32 characters of `a-z 0-9 - _`, lower-cased when parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The longest tag.
    pub const MAX_CHARS: usize = 32;

    /// Lower-cases and validates a tag.
    pub fn parse(input: &str) -> Result<Self, TaskError> {
        let t = input.trim().to_ascii_lowercase();
        let ok_chars = t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if t.is_empty() || t.len() > Self::MAX_CHARS || !ok_chars {
            return Err(TaskError::BadTag(input.chars().take(40).collect()));
        }
        Ok(Self(t))
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A task's tags: a set of at most 20.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags(BTreeSet<Tag>);

impl Tags {
    /// The most tags one task may carry.
    pub const MAX: usize = 20;

    /// Builds a tag set, refusing more than [`Tags::MAX`] distinct tags.
    pub fn new(tags: impl IntoIterator<Item = Tag>) -> Result<Self, TaskError> {
        let set: BTreeSet<Tag> = tags.into_iter().collect();
        if set.len() > Self::MAX {
            return Err(TaskError::TooManyTags(Self::MAX));
        }
        Ok(Self(set))
    }

    /// The tags in order.
    pub fn iter(&self) -> impl Iterator<Item = &Tag> {
        self.0.iter()
    }

    /// True if the set holds this tag.
    pub fn contains(&self, tag: &Tag) -> bool {
        self.0.contains(tag)
    }
}

/// How urgent a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, ToSchema)]
pub enum Priority {
    /// No priority set.
    #[default]
    None,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
}

impl Priority {
    /// The name used in documents and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::None => "none",
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }

    /// Parses a priority name.
    pub fn parse(input: &str) -> Result<Self, TaskError> {
        match input {
            "none" => Ok(Priority::None),
            "low" => Ok(Priority::Low),
            "medium" => Ok(Priority::Medium),
            "high" => Ok(Priority::High),
            _ => Err(TaskError::BadPriority),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task, as read from its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// What to do.
    pub title: Title,
    /// Details.
    pub notes: Notes,
    /// Whether it is done.
    pub done: bool,
    /// The day it is due, if any.
    pub due: Option<NaiveDate>,
    /// How urgent it is.
    pub priority: Priority,
    /// Labels for filtering.
    pub tags: Tags,
    /// When the task was created.
    pub created_at: DateTime<Utc>,
    /// When any field last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was last marked done; cleared when reopened.
    pub completed_at: Option<DateTime<Utc>>,
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$ty>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_serde!(Title);
string_serde!(Notes);
string_serde!(Tag);
string_serde!(Priority);

impl Serialize for Tags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tags = Vec::<Tag>::deserialize(d)?;
        Tags::new(tags).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_is_trimmed_and_bounded() {
        assert_eq!(Title::parse("  buy milk ").unwrap().as_str(), "buy milk");
        assert_eq!(Title::parse("   "), Err(TaskError::EmptyTitle));
        assert!(Title::parse(&"é".repeat(200)).is_ok());
        assert!(Title::parse(&"é".repeat(201)).is_err());
        assert_eq!(
            Title::parse("a\nb"),
            Err(TaskError::ControlCharacters("title"))
        );
    }

    #[test]
    fn notes_keep_newlines_but_not_other_controls() {
        assert!(Notes::parse("line 1\n\tline 2").is_ok());
        assert!(Notes::parse("bell\u{7}").is_err());
        assert!(Notes::parse(&"x".repeat(20_001)).is_err());
    }

    #[test]
    fn tags_are_lower_cased_deduplicated_and_capped() {
        let tags = Tags::new(
            ["Home", "home", "work"]
                .iter()
                .map(|t| Tag::parse(t).unwrap()),
        )
        .unwrap();
        assert_eq!(
            tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
            ["home", "work"]
        );
        assert!(Tag::parse("two words").is_err());
        assert!(Tag::parse("").is_err());
        let many = (0..21).map(|i| Tag::parse(&format!("t{i}")).unwrap());
        assert_eq!(Tags::new(many), Err(TaskError::TooManyTags(20)));
    }

    #[test]
    fn priority_names_round_trip() {
        for p in [
            Priority::None,
            Priority::Low,
            Priority::Medium,
            Priority::High,
        ] {
            assert_eq!(Priority::parse(p.as_str()).unwrap(), p);
        }
        assert_eq!(Priority::parse("urgent"), Err(TaskError::BadPriority));
    }
}
