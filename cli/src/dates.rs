//! Dates as people type them: `2026-12-01`, `today`, `tomorrow`, `+3`.

use chrono::{Days, NaiveDate};

/// A due date relative to `today`. `None` for "none" (clear the date).
pub(crate) fn parse_due(text: &str, today: NaiveDate) -> Result<Option<NaiveDate>, String> {
    let t = text.trim().to_ascii_lowercase();
    let date = match t.as_str() {
        "none" | "" => return Ok(None),
        "today" => today,
        "tomorrow" => today + Days::new(1),
        "week" | "next-week" => today + Days::new(7),
        _ => {
            if let Some(n) = t.strip_prefix('+').map(|n| n.trim_end_matches('d')) {
                let days: u64 = n
                    .parse()
                    .map_err(|_| format!("{text:?} is not a number of days (+3)"))?;
                today + Days::new(days)
            } else {
                NaiveDate::parse_from_str(&t, "%Y-%m-%d").map_err(|_| {
                    format!("{text:?} is not a date (YYYY-MM-DD, today, tomorrow, +N)")
                })?
            }
        }
    };
    Ok(Some(date))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_dates() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert_eq!(
            parse_due("tomorrow", today).unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 1)
        );
        assert_eq!(
            parse_due("+3", today).unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 3)
        );
        assert_eq!(
            parse_due("2027-01-02", today).unwrap(),
            NaiveDate::from_ymd_opt(2027, 1, 2)
        );
        assert_eq!(parse_due("none", today).unwrap(), None);
        assert!(parse_due("someday", today).is_err());
    }
}
