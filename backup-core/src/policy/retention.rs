//! Which points to keep: [`Retention::apply`], a pure function (the rules are on [`Retention`]).

use std::collections::BTreeMap;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Serialize;

use super::{month_name, weekday_name};

/// A point as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRef {
    /// Its id.
    pub id: String,
    /// When its snapshot was taken.
    pub time: Timestamp,
}

impl PointRef {
    /// A point by id and time.
    pub fn new(id: impl Into<String>, time: Timestamp) -> Self {
        PointRef { id: id.into(), time }
    }
}

/// Why a point is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// It is the newest point: always kept.
    Newest,
    /// It is one of the newest `keep_last`.
    Last,
    /// The daily rule.
    Daily,
    /// The weekly rule.
    Weekly,
    /// The monthly rule.
    Monthly,
    /// The yearly rule.
    Yearly,
    /// Its time is after `now`: kept until the clock catches up.
    AfterNow,
}

impl KeepReason {
    /// The reason's name as it appears in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Newest => "newest",
            KeepReason::Last => "last",
            KeepReason::Daily => "daily",
            KeepReason::Weekly => "weekly",
            KeepReason::Monthly => "monthly",
            KeepReason::Yearly => "yearly",
            KeepReason::AfterNow => "after_now",
        }
    }
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retained {
    /// The point's id.
    pub id: String,
    /// Its time.
    pub time: Timestamp,
    /// Why it is kept; empty when it is to be removed.
    pub reasons: Vec<KeepReason>,
}

impl Retained {
    /// Whether some rule keeps it.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// A day of the month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayOfMonth {
    /// Day 1 to 28.
    Day(i8),
    /// The month's last day.
    Last,
}

/// A week of the month: days 1-7, 8-14, 15-21, 22-28, or the last seven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeekOfMonth {
    /// Days 1 to 7.
    First,
    /// Days 8 to 14.
    Second,
    /// Days 15 to 21.
    Third,
    /// Days 22 to 28.
    Fourth,
    /// The month's last seven days.
    Last,
}

/// How monthly and yearly rules pick dates inside a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaySelector {
    /// These days of the month.
    DaysOfMonth(Vec<DayOfMonth>),
    /// These weekdays in these weeks of the month ("the last sunday").
    Weekdays {
        /// The weekdays.
        weekdays: Vec<Weekday>,
        /// The weeks.
        weeks: Vec<WeekOfMonth>,
    },
}

impl DaySelector {
    /// Whether the selector picks `d`.
    pub fn matches(&self, d: Date) -> bool {
        match self {
            DaySelector::DaysOfMonth(days) => days.iter().any(|x| match x {
                DayOfMonth::Day(n) => d.day() == *n,
                DayOfMonth::Last => d.day() == d.days_in_month(),
            }),
            DaySelector::Weekdays { weekdays, weeks } => {
                weekdays.contains(&d.weekday())
                    && weeks.iter().any(|w| match w {
                        WeekOfMonth::First => (1..=7).contains(&d.day()),
                        WeekOfMonth::Second => (8..=14).contains(&d.day()),
                        WeekOfMonth::Third => (15..=21).contains(&d.day()),
                        WeekOfMonth::Fourth => (22..=28).contains(&d.day()),
                        WeekOfMonth::Last => d.day() > d.days_in_month() - 7,
                    })
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            DaySelector::DaysOfMonth(days) => {
                let d: Vec<String> = days
                    .iter()
                    .map(|x| match x {
                        DayOfMonth::Day(n) => format!("day {n}"),
                        DayOfMonth::Last => "the last day".into(),
                    })
                    .collect();
                d.join(" and ")
            }
            DaySelector::Weekdays { weekdays, weeks } => {
                let w: Vec<&str> = weeks
                    .iter()
                    .map(|w| match w {
                        WeekOfMonth::First => "first",
                        WeekOfMonth::Second => "second",
                        WeekOfMonth::Third => "third",
                        WeekOfMonth::Fourth => "fourth",
                        WeekOfMonth::Last => "last",
                    })
                    .collect();
                let d: Vec<&str> = weekdays.iter().map(|d| weekday_name(*d)).collect();
                format!("the {} {}", w.join(" and "), d.join(" and "))
            }
        }
    }
}

/// The weekly rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklyRule {
    /// How many weeks back.
    pub weeks: u32,
    /// The weekdays whose points are kept.
    pub days: Vec<Weekday>,
}

/// The monthly rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthlyRule {
    /// How many months back.
    pub months: u32,
    /// Which dates of each month.
    pub on: DaySelector,
}

/// The yearly rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YearlyRule {
    /// How many years back.
    pub years: u32,
    /// The months (1 to 12) whose points are kept.
    pub months: Vec<i8>,
    /// Which dates of those months.
    pub on: DaySelector,
}

/// Retention rules and the zone whose calendar they count in. Build one
/// with [`Retention::new`] and set the rules, or take a
/// [`Policy`](super::Policy)'s.
///
/// Which points to keep: a pure function of the points, the rules and now.
///
/// Points are bucketed by their local calendar date in the policy's zone.
/// Each rule keeps the newest point of each date it selects:
///
/// - daily (D days): every date from today back to today - (D - 1) days;
/// - weekly (W weeks, days): dates on those weekdays after today - W weeks;
/// - monthly (M months, selector): dates the selector picks after today - M
///   months (a month back from the 31st is the month's last day);
/// - yearly (Y years, months, selector): dates in those months that the
///   selector picks, after today - Y years.
///
/// A rule selects dates, not points: a date whose backup failed keeps
/// nothing and is not replaced by a neighbour (as cloud backup services do).
/// Besides the rules, keep-last keeps the newest N points whatever their
/// date, the newest point is always kept, and points after `now` (a clock
/// that moved back) are kept.
///
/// ```
/// use backup_core::{PointRef, Retention};
/// let mut r = Retention::new(jiff::tz::TimeZone::get("Europe/Berlin")?);
/// r.daily_days = Some(7);
/// let points: Vec<PointRef> = (1..=10)
///     .map(|d| PointRef::new(format!("p{d}"), format!("2025-03-{d:02}T01:00:00Z").parse().unwrap()))
///     .collect();
/// let now = "2025-03-10T12:00:00Z".parse()?;
/// let kept: Vec<String> = r.apply(&points, now).into_iter().filter(|p| p.keep()).map(|p| p.id).collect();
/// assert_eq!(kept, ["p4", "p5", "p6", "p7", "p8", "p9", "p10"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Retention {
    /// The zone whose calendar dates the rules count.
    pub time_zone: TimeZone,
    /// Keep the newest N points.
    pub keep_last: Option<u32>,
    /// Keep the newest point of each of the last N days.
    pub daily_days: Option<u32>,
    /// The weekly rule.
    pub weekly: Option<WeeklyRule>,
    /// The monthly rule.
    pub monthly: Option<MonthlyRule>,
    /// The yearly rule.
    pub yearly: Option<YearlyRule>,
    /// How many days prune keeps the log of a finished job whose point is
    /// gone (or that committed none); a job's log lives at least as long
    /// as its point. Default 90.
    pub job_log_days: u32,
}

/// The days a finished job's log is kept after its point is gone, unless a
/// policy says otherwise.
pub const DEFAULT_JOB_LOG_DAYS: u32 = 90;

impl Retention {
    /// No rules yet (only the newest point would be kept).
    pub fn new(time_zone: TimeZone) -> Self {
        Retention {
            time_zone,
            keep_last: None,
            daily_days: None,
            weekly: None,
            monthly: None,
            yearly: None,
            job_log_days: DEFAULT_JOB_LOG_DAYS,
        }
    }

    /// The verdict on every point, oldest first. Pure: the same points,
    /// rules and `now` always give the same answer. Points with the same id
    /// are judged once.
    pub fn apply(&self, points: &[PointRef], now: Timestamp) -> Vec<Retained> {
        let mut sorted: Vec<&PointRef> = points.iter().collect();
        sorted.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        sorted.dedup_by(|a, b| a.id == b.id);
        let mut out: Vec<Retained> =
            sorted.iter().map(|p| Retained { id: p.id.clone(), time: p.time, reasons: Vec::new() }).collect();
        let Some(last) = out.len().checked_sub(1) else {
            return out;
        };
        out[last].reasons.push(KeepReason::Newest);
        if let Some(n) = self.keep_last {
            for r in out.iter_mut().rev().take(n as usize) {
                r.reasons.push(KeepReason::Last);
            }
        }
        // date -> index of the newest point of that date (sorted, so the last wins).
        let mut newest_of: BTreeMap<Date, usize> = BTreeMap::new();
        for (i, p) in out.iter().enumerate() {
            if p.time <= now {
                newest_of.insert(p.time.to_zoned(self.time_zone.clone()).date(), i);
            }
        }
        let today = now.to_zoned(self.time_zone.clone()).date();
        // Dates strictly after `since`, up to today.
        let window = |since: Date| newest_of.range(since.tomorrow().unwrap_or(since)..=today);
        let mut marks: Vec<(usize, KeepReason)> = Vec::new();
        if let Some(d) = self.daily_days {
            let since = today.saturating_sub(i64::from(d).days());
            marks.extend(window(since).map(|(_, i)| (*i, KeepReason::Daily)));
        }
        if let Some(w) = &self.weekly {
            let since = today.saturating_sub(i64::from(w.weeks).weeks());
            marks.extend(
                window(since).filter(|(d, _)| w.days.contains(&d.weekday())).map(|(_, i)| (*i, KeepReason::Weekly)),
            );
        }
        if let Some(m) = &self.monthly {
            let since = today.saturating_sub(i64::from(m.months).months());
            marks.extend(window(since).filter(|(d, _)| m.on.matches(**d)).map(|(_, i)| (*i, KeepReason::Monthly)));
        }
        if let Some(y) = &self.yearly {
            let since = today.saturating_sub(i64::from(y.years).years());
            marks.extend(
                window(since)
                    .filter(|(d, _)| y.months.contains(&d.month()) && y.on.matches(**d))
                    .map(|(_, i)| (*i, KeepReason::Yearly)),
            );
        }
        for (i, why) in marks {
            out[i].reasons.push(why);
        }
        for r in out.iter_mut() {
            if r.time > now {
                r.reasons.push(KeepReason::AfterNow);
            }
            r.reasons.sort();
            r.reasons.dedup();
        }
        out
    }

    /// The rules in a few lines of English.
    pub fn summary(&self) -> Vec<String> {
        let mut out = vec!["the newest point is always kept".to_string()];
        if let Some(n) = self.keep_last {
            out.push(format!("keep the last {n} points"));
        }
        if let Some(d) = self.daily_days {
            out.push(format!("daily: the newest point of each of the last {d} days"));
        }
        if let Some(w) = &self.weekly {
            let days: Vec<&str> = w.days.iter().map(|d| weekday_name(*d)).collect();
            out.push(format!("weekly: the newest point of each {} of the last {} weeks", days.join(" and "), w.weeks));
        }
        if let Some(m) = &self.monthly {
            out.push(format!(
                "monthly: the newest point of {} of each of the last {} months",
                m.on.describe(),
                m.months
            ));
        }
        if let Some(y) = &self.yearly {
            let months: Vec<&str> = y.months.iter().map(|m| month_name(*m)).collect();
            out.push(format!(
                "yearly: the newest point of {} of {} of each of the last {} years",
                y.on.describe(),
                months.join(" and "),
                y.years
            ));
        }
        out.push(format!("job logs: kept with their point, then {} days", self.job_log_days));
        out
    }
}
