//! When backups run: daily at times, weekly on days at times, or every N
//! hours inside a daily window, all in a zone's civil time.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

use super::weekday_name;
use crate::error::{Error, Result};

/// When backups run, in the civil time of the policy's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schedule {
    /// Every day at these times (sorted, distinct).
    Daily {
        /// Local times of day.
        times: Vec<Time>,
    },
    /// On these days (Monday first, distinct) at these times (sorted).
    Weekly {
        /// The days of the week.
        days: Vec<Weekday>,
        /// Local times of day.
        times: Vec<Time>,
    },
    /// Every day, at `window_start` and every `every_hours` after it while
    /// still inside the window of `window_hours` (a window may cross
    /// midnight). Hours are civil: across a DST change two runs may be one
    /// hour closer or further apart in real time.
    Hourly {
        /// 4, 6, 8 or 12.
        every_hours: u8,
        /// The first run of each day.
        window_start: Time,
        /// The window's length, 1 to 24 hours; a run starts strictly inside it.
        window_hours: u8,
    },
}

/// At most this many runs are listed at once.
const MAX_RUNS: usize = 100_000;

impl Schedule {
    /// The civil start times of the runs that belong to `date`, in order.
    /// An hourly window that crosses midnight yields times on the next date.
    fn runs_of(&self, date: Date) -> Result<Vec<DateTime>> {
        Ok(match self {
            Schedule::Daily { times } => times.iter().map(|t| date.to_datetime(*t)).collect(),
            Schedule::Weekly { days, times } => {
                if days.contains(&date.weekday()) {
                    times.iter().map(|t| date.to_datetime(*t)).collect()
                } else {
                    Vec::new()
                }
            }
            Schedule::Hourly { every_hours, window_start, window_hours } => {
                let start = date.to_datetime(*window_start);
                let mut out = Vec::new();
                let mut h = 0i64;
                while h < i64::from(*window_hours) {
                    out.push(start.checked_add(h.hours()).map_err(range_error)?);
                    h += i64::from(*every_hours);
                }
                out
            }
        })
    }

    /// The next `n` runs strictly after `after`, in `tz`, oldest first.
    ///
    /// A civil time that the zone skips (the spring-forward gap) runs at the
    /// same distance after the gap (02:30 becomes 03:30); a civil time that
    /// happens twice (the fall-back fold) runs once, at its first
    /// occurrence. Runs that land on the same instant are listed once.
    /// At most 100,000 runs are listed.
    ///
    /// # Errors
    /// Only at the ends of the time range jiff represents (year 9999).
    pub fn next_runs(&self, tz: &TimeZone, after: Timestamp, n: usize) -> Result<Vec<Zoned>> {
        let n = n.min(MAX_RUNS);
        let mut out: Vec<Zoned> = Vec::with_capacity(n);
        // From the day before: yesterday's hourly window may reach into today.
        let mut date = after.to_zoned(tz.clone()).date().yesterday().map_err(range_error)?;
        // Every schedule runs at least once a week.
        let mut days_left = n.saturating_mul(7).saturating_add(9);
        while out.len() < n && days_left > 0 {
            for dt in self.runs_of(date)? {
                let z = tz.to_ambiguous_zoned(dt).compatible().map_err(range_error)?;
                let later = out.last().is_none_or(|l| z.timestamp() > l.timestamp());
                if z.timestamp() > after && later {
                    out.push(z);
                    if out.len() == n {
                        break;
                    }
                }
            }
            date = date.tomorrow().map_err(range_error)?;
            days_left -= 1;
        }
        Ok(out)
    }

    /// The latest run at or before `now` and strictly after `since`: the
    /// run a scheduler that was down since `since` owes (one catch-up run,
    /// however many were missed). None when no run is due.
    ///
    /// # Errors
    /// Only at the ends of the time range jiff represents.
    pub fn due(&self, tz: &TimeZone, since: Timestamp, now: Timestamp) -> Result<Option<Zoned>> {
        if now <= since {
            return Ok(None);
        }
        // Start at most eight days back: every schedule runs weekly.
        let floor = now.checked_sub(jiff::SignedDuration::from_hours(24 * 8)).map_err(range_error)?;
        let mut from = since.max(floor);
        let mut last = None;
        loop {
            let runs = self.next_runs(tz, from, 64)?;
            let before: Vec<Zoned> = runs.iter().filter(|z| z.timestamp() <= now).cloned().collect();
            let done = before.len() < runs.len() || runs.is_empty();
            if let Some(z) = before.last() {
                from = z.timestamp();
                last = Some(z.clone());
            }
            if done || before.is_empty() {
                return Ok(last);
            }
        }
    }

    /// The schedule in a few words of English.
    pub fn describe(&self) -> String {
        let times = |t: &[Time]| t.iter().map(|t| t.strftime("%H:%M").to_string()).collect::<Vec<_>>().join(", ");
        match self {
            Schedule::Daily { times: t } => format!("daily at {}", times(t)),
            Schedule::Weekly { days, times: t } => format!(
                "weekly on {} at {}",
                days.iter().map(|d| weekday_name(*d)).collect::<Vec<_>>().join(", "),
                times(t)
            ),
            Schedule::Hourly { every_hours, window_start, window_hours } => format!(
                "every {every_hours} hours from {} for {window_hours} hours each day",
                window_start.strftime("%H:%M")
            ),
        }
    }
}

fn range_error(e: jiff::Error) -> Error {
    Error::invalid("schedule time", format!("outside the representable range: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn runs(s: &Schedule, zone: &str, after: &str, n: usize) -> Vec<String> {
        let tz = TimeZone::get(zone).expect("zone");
        s.next_runs(&tz, ts(after), n).expect("runs").iter().map(|z| z.timestamp().to_string()).collect()
    }

    #[test]
    fn hourly_window_crossing_midnight() {
        let s = Schedule::Hourly { every_hours: 4, window_start: Time::constant(22, 0, 0, 0), window_hours: 8 };
        assert_eq!(
            runs(&s, "UTC", "2025-01-01T12:00:00Z", 3),
            ["2025-01-01T22:00:00Z", "2025-01-02T02:00:00Z", "2025-01-02T22:00:00Z"]
        );
    }

    #[test]
    fn due_catches_up_once() {
        let s = Schedule::Daily { times: vec![Time::constant(2, 0, 0, 0), Time::constant(14, 0, 0, 0)] };
        let tz = TimeZone::UTC;
        let due = s.due(&tz, ts("2025-01-01T00:00:00Z"), ts("2025-01-05T15:00:00Z")).expect("due");
        assert_eq!(due.map(|z| z.timestamp().to_string()).as_deref(), Some("2025-01-05T14:00:00Z"));
        let none = s.due(&tz, ts("2025-01-05T14:00:00Z"), ts("2025-01-05T15:00:00Z")).expect("due");
        assert!(none.is_none());
    }
}
