//! How results are shown: aligned tables with colour on a terminal, plain
//! text in a pipe, JSON with `--json`.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Local, Utc};
use codeedex_client_core::TaskView;
use serde::Serialize;

/// A colour for a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Dim,
    Bold,
    Red,
    Green,
    Yellow,
    Cyan,
}

impl Style {
    fn code(self) -> Option<&'static str> {
        match self {
            Style::Plain => None,
            Style::Dim => Some("2"),
            Style::Bold => Some("1"),
            Style::Red => Some("31"),
            Style::Green => Some("32"),
            Style::Yellow => Some("33"),
            Style::Cyan => Some("36"),
        }
    }
}

/// Where output goes and how it looks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// Print JSON.
    pub json: bool,
    /// Colour standard output.
    pub colour: bool,
}

impl Output {
    /// Colour only on a terminal, and never with `NO_COLOR` set.
    pub fn new(json: bool) -> Self {
        let colour =
            !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self { json, colour }
    }

    /// `text` in `style` (when colouring).
    pub fn paint(&self, text: &str, style: Style) -> String {
        match (self.colour, style.code()) {
            (true, Some(code)) => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }

    /// Prints a value as pretty JSON.
    pub fn json<T: Serialize>(&self, value: &T) {
        let text = serde_json::to_string_pretty(value).expect("output types serialise");
        self.line(&text);
    }

    /// Prints one line. A closed pipe (`codeedex ls | head`) is not an error.
    pub fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }
}

/// A table: a header row and rows of styled cells, columns padded to the
/// widest cell (by characters), the last column not padded.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<(String, Style)>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<(String, Style)>) {
        self.rows.push(cells);
    }

    pub fn print(&self, out: &Output) {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let render = |cells: Vec<(String, Style)>| -> String {
            let last = cells.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (text, style)) in cells.into_iter().enumerate() {
                let pad = if i == last {
                    0
                } else {
                    widths[i].saturating_sub(text.chars().count()) + 2
                };
                line.push_str(&out.paint(&text, style));
                line.push_str(&" ".repeat(pad));
            }
            line.trim_end().to_owned()
        };
        out.line(&render(
            self.header
                .iter()
                .map(|h| (h.to_uppercase(), Style::Bold))
                .collect(),
        ));
        for row in &self.rows {
            out.line(&render(row.clone()));
        }
    }
}

/// The short form of a task id shown in tables.
pub(crate) fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

/// A time in the local zone, to the minute.
pub(crate) fn local_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

/// Shows tasks as a table (or JSON).
pub(crate) fn tasks(out: &Output, tasks: &[TaskView]) {
    if out.json {
        out.json(&tasks);
        return;
    }
    if tasks.is_empty() {
        out.line("no tasks");
        return;
    }
    let today = Local::now().date_naive();
    let mut table = Table::new(&["id", "", "due", "pri", "title", "tags"]);
    for task in tasks {
        let due = task.due.map(|d| d.to_string()).unwrap_or_default();
        let due_style = match task.due {
            Some(d) if !task.done && d < today => Style::Red,
            Some(d) if !task.done && d == today => Style::Yellow,
            _ => Style::Plain,
        };
        let priority_style = match task.priority.as_str() {
            "high" => Style::Red,
            "medium" => Style::Yellow,
            _ => Style::Dim,
        };
        let priority = if task.priority == "none" {
            String::new()
        } else {
            task.priority.clone()
        };
        table.row(vec![
            (short_id(&task.id.to_string()), Style::Cyan),
            (
                if task.done {
                    "✓".to_owned()
                } else {
                    "·".to_owned()
                },
                if task.done { Style::Green } else { Style::Dim },
            ),
            (due, due_style),
            (priority, priority_style),
            (
                task.title.clone(),
                if task.done { Style::Dim } else { Style::Plain },
            ),
            (
                task.tags
                    .iter()
                    .map(|t| format!("#{t}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                Style::Dim,
            ),
        ]);
    }
    table.print(out);
}

/// Shows one task in full (or JSON).
pub(crate) fn task(out: &Output, task: &TaskView) {
    if out.json {
        out.json(task);
        return;
    }
    let label = |name: &str| out.paint(&format!("{name:<10}"), Style::Bold);
    out.line(&format!(
        "{}{}",
        label("id"),
        out.paint(&task.id.to_string(), Style::Cyan)
    ));
    out.line(&format!("{}{}", label("title"), task.title));
    out.line(&format!(
        "{}{}",
        label("status"),
        if task.done {
            out.paint("done", Style::Green)
        } else {
            "open".to_owned()
        }
    ));
    if let Some(due) = task.due {
        out.line(&format!("{}{due}", label("due")));
    }
    out.line(&format!("{}{}", label("priority"), task.priority));
    if !task.tags.is_empty() {
        out.line(&format!("{}{}", label("tags"), task.tags.join(", ")));
    }
    out.line(&format!(
        "{}{}",
        label("created"),
        local_time(task.created_at)
    ));
    out.line(&format!(
        "{}{}",
        label("updated"),
        local_time(task.updated_at)
    ));
    if let Some(at) = task.completed_at {
        out.line(&format!("{}{}", label("completed"), local_time(at)));
    }
    if !task.notes.is_empty() {
        out.line("");
        for line in task.notes.lines() {
            out.line(&format!("  {line}"));
        }
    }
}

/// A one-line confirmation of a change (or the task as JSON).
pub(crate) fn changed(out: &Output, verb: &str, task: &TaskView) {
    if out.json {
        out.json(task);
    } else {
        out.line(&format!(
            "{verb} {}  {}",
            out.paint(&short_id(&task.id.to_string()), Style::Cyan),
            task.title
        ));
    }
}
