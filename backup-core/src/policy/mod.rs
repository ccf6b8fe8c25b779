//! Policies: when a VM is backed up and how long its points live; the file
//! format is on [`Policy`].

mod retention;
mod schedule;

use std::path::Path;

use jiff::Timestamp;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::error::{Error, Result};

pub use retention::{
    DEFAULT_JOB_LOG_DAYS, DayOfMonth, DaySelector, KeepReason, MonthlyRule, PointRef, Retained, Retention, WeekOfMonth,
    WeeklyRule, YearlyRule,
};
pub use schedule::Schedule;

/// The allowed days between boot verifications of a VM's newest point.
pub const BOOT_VERIFY_DAYS: std::ops::RangeInclusive<u32> = 1..=366;
/// The allowed seconds a boot verification's guest agent has.
pub const BOOT_VERIFY_TIMEOUT_SECS: std::ops::RangeInclusive<u32> = 10..=3600;

/// The allowed instant-restore days.
pub const INSTANT_RESTORE_DAYS: std::ops::RangeInclusive<u32> = 1..=30;
/// The allowed days of daily retention.
pub const DAILY_DAYS: std::ops::RangeInclusive<u32> = 7..=9999;
/// The allowed weeks of weekly retention.
pub const WEEKLY_WEEKS: std::ops::RangeInclusive<u32> = 1..=5163;
/// The allowed months of monthly retention.
pub const MONTHLY_MONTHS: std::ops::RangeInclusive<u32> = 1..=1188;
/// The allowed years of yearly retention.
pub const YEARLY_YEARS: std::ops::RangeInclusive<u32> = 1..=99;
/// The allowed days a finished job's log is kept after its point is gone.
pub const JOB_LOG_DAYS: std::ops::RangeInclusive<u32> = 1..=9999;
/// The allowed keep-last counts.
pub const KEEP_LAST: std::ops::RangeInclusive<u32> = 1..=9999;
/// The allowed intervals of an hourly schedule.
pub const EVERY_HOURS: [u8; 4] = [4, 6, 8, 12];

/// A checked backup policy: schedule, time zone, instant restore and
/// retention.
///
/// Policies: when a VM is backed up ([`Schedule`]) and how long its points
/// live ([`Retention`]), in the vocabulary of cloud VM backup.
///
/// A policy is a TOML file:
///
/// ```toml
/// timezone = "Europe/Berlin"         # IANA name; schedule and retention use its local time
/// instant_restore_days = 2           # 1..=30, default 2: days a point's snapshot is kept
///
/// [schedule]
/// frequency = "daily"                # "daily", "weekly" or "hourly"
/// times = ["02:00", "14:30"]         # daily and weekly: local times of day
/// # days = ["sunday", "wednesday"]   # weekly only: the days
/// # every_hours = 4                  # hourly only: 4, 6, 8 or 12
/// # window_start = "08:00"           # hourly only: the first run of each day
/// # window_hours = 12                # hourly only: 1..=24 (default 24); runs start inside it
///
/// [retention]
/// keep_last = 3                                            # 1..=9999: the newest points, whatever their day
/// daily = { days = 30 }                                    # 7..=9999
/// weekly = { weeks = 12, days = ["sunday"] }               # 1..=5163
/// monthly = { months = 12, days_of_month = [1, "last"] }   # 1..=1188
/// yearly = { years = 5, months_of_year = ["january"], weekdays = ["sunday"], weeks_of_month = ["first"] }  # 1..=99
/// job_logs = { days = 90 }                                 # 1..=9999, default 90: logs of jobs whose point is gone
///
/// [boot_verify]                      # optional; libvirt VMs only (`schedule`)
/// every_days = 7                     # 1..=366: boot the newest point when no point was verified for this long
/// timeout_secs = 300                 # 10..=3600, default 300: for the guest agent, then for the script
/// # script = "/etc/vmbackup/boot-test.sh"  # an in-guest test run through the agent; exit 0 passes
///
/// # [copy]                           # optional (`schedule`): a second site
/// # to = "s3://offsite/vault"        # a folder or a URL: each new point is copied there after its backup
/// # endpoint = "https://..."         # the object store's endpoint, when not the cloud's own
/// # key_file = "/etc/vmbackup/offsite.key"          # or passphrase_file = "...": unlocks an encrypted target
/// ```
///
/// Monthly and yearly points are picked either by `days_of_month` (1 to 28,
/// or `"last"`) or by `weekdays` and `weeks_of_month` (`"first"` to
/// `"fourth"`, or `"last"`: the month's last seven days). Days and months
/// may be written in full or by their first three letters.
///
/// Refused, with an error naming the field: unknown fields, values out of
/// range, duplicates in a list, a schedule field that does not belong to
/// its frequency, a policy that keeps nothing, daily retention with a
/// weekly schedule (it makes no daily points), weekday-based retention on a
/// day the weekly schedule never runs (or day-of-month retention with a
/// weekly schedule), monthly or yearly rules that give both or neither way
/// of picking days, and instant restore longer than daily retention.
///
/// Time is the policy zone's civil time: a run at 02:30 on the night the
/// clocks skip 02:00..03:00 happens at 03:30, and on the night 02:00..03:00
/// repeats it happens once, at the first 02:30. Retention buckets points by
/// their local calendar date in the same zone.
///
/// ```
/// use backup_core::Policy;
/// let policy = Policy::from_toml_str(r#"
///     timezone = "America/New_York"
///     [schedule]
///     frequency = "daily"
///     times = ["23:30"]
///     [retention]
///     daily = { days = 7 }
/// "#)?;
/// let after: jiff::Timestamp = "2025-03-08T12:00:00Z".parse()?;
/// let runs = policy.next_runs(after, 2)?;
/// assert_eq!(runs[0].to_string(), "2025-03-08T23:30:00-05:00[America/New_York]");
/// assert_eq!(runs[1].to_string(), "2025-03-09T23:30:00-04:00[America/New_York]");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Policy {
    /// The IANA name of the policy's time zone, as written.
    pub time_zone_name: String,
    /// The time zone.
    pub time_zone: TimeZone,
    /// When backups run.
    pub schedule: Schedule,
    /// Days a point's snapshot is kept for instant restore.
    pub instant_restore_days: u32,
    /// How long points live (carries the same time zone).
    pub retention: Retention,
    /// When `schedule` boots a VM's newest point to verify it.
    pub boot_verify: Option<BootVerifyRule>,
    /// Where `schedule` copies each new point after its backup.
    pub copy: Option<CopyRule>,
}

/// A second site: where `schedule` copies each new point after its backup
/// (see [`copy`](crate::copy)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyRule {
    /// The target vault: a folder or a URL (`az://...`, `s3://...`).
    pub to: String,
    /// The target's object-store endpoint, when not the cloud's own.
    pub endpoint: Option<String>,
    /// A key file that unlocks an encrypted target.
    pub key_file: Option<std::path::PathBuf>,
    /// A file whose first line is the passphrase of an encrypted target.
    pub passphrase_file: Option<std::path::PathBuf>,
}

/// When `schedule` boot-verifies a libvirt VM's newest point, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootVerifyRule {
    /// Boot the newest point when no point of the VM was verified in this
    /// many days.
    pub every_days: u32,
    /// Seconds for the guest agent, then for the script.
    pub timeout_secs: u32,
    /// An in-guest test (a script on this host).
    pub script: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    timezone: String,
    instant_restore_days: Option<i64>,
    /// Needed by a whole policy; retention alone (a prune) goes without.
    schedule: Option<RawSchedule>,
    retention: RawRetention,
    boot_verify: Option<RawBootVerify>,
    copy: Option<RawCopy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    to: String,
    endpoint: Option<String>,
    key_file: Option<String>,
    passphrase_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBootVerify {
    every_days: i64,
    timeout_secs: Option<i64>,
    script: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    frequency: String,
    times: Option<Vec<String>>,
    days: Option<Vec<String>>,
    every_hours: Option<i64>,
    window_start: Option<String>,
    window_hours: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<i64>,
    daily: Option<RawDaily>,
    weekly: Option<RawWeekly>,
    monthly: Option<RawMonthly>,
    yearly: Option<RawYearly>,
    job_logs: Option<RawDaily>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaily {
    days: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeekly {
    weeks: i64,
    days: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonthly {
    months: i64,
    days_of_month: Option<Vec<RawDom>>,
    weekdays: Option<Vec<String>>,
    weeks_of_month: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawYearly {
    years: i64,
    months_of_year: Vec<String>,
    days_of_month: Option<Vec<RawDom>>,
    weekdays: Option<Vec<String>>,
    weeks_of_month: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDom {
    Day(i64),
    Name(String),
}

/// An error about one field of a policy.
fn bad(field: &str, why: impl Into<String>) -> Error {
    Error::invalid(format!("policy field {field}"), why)
}

fn in_range(field: &str, v: i64, range: std::ops::RangeInclusive<u32>) -> Result<u32> {
    match u32::try_from(v) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(bad(field, format!("{v} is out of range {}..={}", range.start(), range.end()))),
    }
}

fn no_duplicates<T: PartialEq + std::fmt::Debug>(field: &str, items: &[T]) -> Result<()> {
    for (i, a) in items.iter().enumerate() {
        if items[..i].contains(a) {
            return Err(bad(field, format!("{a:?} is listed twice")));
        }
    }
    Ok(())
}

fn non_empty<T>(field: &str, items: &[T]) -> Result<()> {
    if items.is_empty() { Err(bad(field, "the list is empty")) } else { Ok(()) }
}

/// Parses a weekday by its English name or first three letters.
pub(crate) fn parse_weekday(field: &str, s: &str) -> Result<Weekday> {
    const NAMES: [(&str, Weekday); 7] = [
        ("monday", Weekday::Monday),
        ("tuesday", Weekday::Tuesday),
        ("wednesday", Weekday::Wednesday),
        ("thursday", Weekday::Thursday),
        ("friday", Weekday::Friday),
        ("saturday", Weekday::Saturday),
        ("sunday", Weekday::Sunday),
    ];
    let l = s.trim().to_ascii_lowercase();
    NAMES
        .iter()
        .find(|(n, _)| *n == l || (l.len() == 3 && n.starts_with(&l)))
        .map(|(_, d)| *d)
        .ok_or_else(|| bad(field, format!("{s:?} is not a day of the week (monday..sunday)")))
}

/// The English name of a weekday.
pub(crate) fn weekday_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "monday",
        Weekday::Tuesday => "tuesday",
        Weekday::Wednesday => "wednesday",
        Weekday::Thursday => "thursday",
        Weekday::Friday => "friday",
        Weekday::Saturday => "saturday",
        Weekday::Sunday => "sunday",
    }
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The English name of a month (1..=12).
pub(crate) fn month_name(m: i8) -> &'static str {
    MONTHS.get((m as usize).wrapping_sub(1)).copied().unwrap_or("?")
}

fn parse_month(field: &str, s: &str) -> Result<i8> {
    let l = s.trim().to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|n| *n == l || (l.len() == 3 && n.starts_with(&l)))
        .map(|i| i as i8 + 1)
        .ok_or_else(|| bad(field, format!("{s:?} is not a month (january..december)")))
}

fn parse_time(field: &str, s: &str) -> Result<Time> {
    let t: Time = s.trim().parse().map_err(|_| bad(field, format!("{s:?} is not a time of day like 02:30")))?;
    if t.second() != 0 || t.subsec_nanosecond() != 0 {
        return Err(bad(field, format!("{s:?}: give hours and minutes only")));
    }
    Ok(t)
}

fn parse_weekdays(field: &str, v: &[String]) -> Result<Vec<Weekday>> {
    non_empty(field, v)?;
    let days = v.iter().map(|s| parse_weekday(field, s)).collect::<Result<Vec<_>>>()?;
    no_duplicates(field, &days)?;
    Ok(days)
}

fn parse_selector(
    field: &str,
    dom: Option<Vec<RawDom>>,
    weekdays: Option<Vec<String>>,
    weeks: Option<Vec<String>>,
) -> Result<DaySelector> {
    match (dom, weekdays, weeks) {
        (Some(dom), None, None) => {
            let f = format!("{field}.days_of_month");
            non_empty(&f, &dom)?;
            let days = dom
                .into_iter()
                .map(|d| match d {
                    RawDom::Day(n) if (1..=28).contains(&n) => Ok(DayOfMonth::Day(n as i8)),
                    RawDom::Day(n) => {
                        Err(bad(&f, format!("{n} is out of range 1..=28 (use \"last\" for a month's end)")))
                    }
                    RawDom::Name(s) if s.trim().eq_ignore_ascii_case("last") => Ok(DayOfMonth::Last),
                    RawDom::Name(s) => Err(bad(&f, format!("{s:?} is neither a day 1..=28 nor \"last\""))),
                })
                .collect::<Result<Vec<_>>>()?;
            no_duplicates(&f, &days)?;
            Ok(DaySelector::DaysOfMonth(days))
        }
        (None, Some(wd), Some(wk)) => {
            let weekdays = parse_weekdays(&format!("{field}.weekdays"), &wd)?;
            let f = format!("{field}.weeks_of_month");
            non_empty(&f, &wk)?;
            let weeks = wk
                .iter()
                .map(|s| match s.trim().to_ascii_lowercase().as_str() {
                    "first" => Ok(WeekOfMonth::First),
                    "second" => Ok(WeekOfMonth::Second),
                    "third" => Ok(WeekOfMonth::Third),
                    "fourth" => Ok(WeekOfMonth::Fourth),
                    "last" => Ok(WeekOfMonth::Last),
                    _ => Err(bad(&f, format!("{s:?} is not first, second, third, fourth or last"))),
                })
                .collect::<Result<Vec<_>>>()?;
            no_duplicates(&f, &weeks)?;
            Ok(DaySelector::Weekdays { weekdays, weeks })
        }
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err(bad(field, "give either days_of_month, or weekdays with weeks_of_month, not both"))
        }
        (None, Some(_), None) => Err(bad(&format!("{field}.weeks_of_month"), "weekdays need weeks_of_month")),
        (None, None, Some(_)) => Err(bad(&format!("{field}.weekdays"), "weeks_of_month need weekdays")),
        (None, None, None) => Err(bad(field, "give days_of_month, or weekdays with weeks_of_month")),
    }
}

impl Policy {
    /// Reads and checks a policy file.
    ///
    /// # Errors
    /// I/O errors naming the file; [`Error::InvalidArgument`] naming the
    /// file and the field for a malformed, out-of-range or contradictory
    /// policy.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy> {
        read_policy_file(path.as_ref(), Self::from_toml_str)
    }

    /// The retention rules of a policy, which may leave out `[schedule]`:
    /// a prune needs only `timezone` and `[retention]`. When the text has a
    /// schedule, the whole policy is checked as [`from_toml_str`]
    /// (Self::from_toml_str) checks it (weekday rules against a weekly
    /// schedule's days, ...).
    ///
    /// ```
    /// let r = backup_core::Policy::retention_from_toml_str(
    ///     "timezone = \"UTC\"\n[retention]\nkeep_last = 3\n",
    /// )?;
    /// assert_eq!(r.keep_last, Some(3));
    /// # Ok::<(), backup_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`from_toml_str`](Self::from_toml_str).
    pub fn retention_from_toml_str(text: &str) -> Result<Retention> {
        let raw = parse_raw(text)?;
        if raw.schedule.is_some() {
            return Self::check(raw).map(|p| p.retention);
        }
        let time_zone = check_time_zone(&raw.timezone)?;
        check_retention(raw.retention, time_zone, None)
    }

    /// [`retention_from_toml_str`](Self::retention_from_toml_str) of a
    /// file; errors name the file.
    ///
    /// # Errors
    /// The file cannot be read, or its rules are bad.
    pub fn retention_from_file(path: impl AsRef<Path>) -> Result<Retention> {
        read_policy_file(path.as_ref(), Self::retention_from_toml_str)
    }

    /// Parses and checks a policy from TOML text.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field for a malformed,
    /// out-of-range or contradictory policy.
    pub fn from_toml_str(text: &str) -> Result<Policy> {
        Self::check(parse_raw(text)?)
    }

    fn check(raw: RawPolicy) -> Result<Policy> {
        let time_zone = check_time_zone(&raw.timezone)?;
        let instant_restore_days = match raw.instant_restore_days {
            Some(v) => in_range("instant_restore_days", v, INSTANT_RESTORE_DAYS)?,
            None => 2,
        };
        let schedule = check_schedule(raw.schedule.ok_or_else(|| {
            bad("schedule", "a policy needs a [schedule] table (a prune reads only timezone and [retention])")
        })?)?;
        let weekly_days = match &schedule {
            Schedule::Weekly { days, .. } => Some(days.as_slice()),
            _ => None,
        };
        let retention = check_retention(raw.retention, time_zone.clone(), weekly_days)?;
        if let Some(d) = retention.daily_days
            && instant_restore_days > d
        {
            return Err(bad(
                "instant_restore_days",
                format!("{instant_restore_days} days is longer than daily retention ({d} days)"),
            ));
        }
        let boot_verify = match raw.boot_verify {
            None => None,
            Some(b) => Some(BootVerifyRule {
                every_days: in_range("boot_verify.every_days", b.every_days, BOOT_VERIFY_DAYS)?,
                timeout_secs: match b.timeout_secs {
                    Some(t) => in_range("boot_verify.timeout_secs", t, BOOT_VERIFY_TIMEOUT_SECS)?,
                    None => 300,
                },
                script: match b.script {
                    Some(p) if !Path::new(&p).is_absolute() => {
                        return Err(bad("boot_verify.script", format!("{p:?} is not an absolute path")));
                    }
                    p => p.map(Into::into),
                },
            }),
        };
        let copy = match raw.copy {
            None => None,
            Some(c) => {
                if c.to.trim().is_empty() {
                    return Err(bad("copy.to", "it is empty"));
                }
                if c.key_file.is_some() && c.passphrase_file.is_some() {
                    return Err(bad("copy.key_file", "give key_file or passphrase_file, not both"));
                }
                for (field, p) in [("copy.key_file", &c.key_file), ("copy.passphrase_file", &c.passphrase_file)] {
                    if let Some(p) = p
                        && !Path::new(p).is_absolute()
                    {
                        return Err(bad(field, format!("{p:?} is not an absolute path")));
                    }
                }
                Some(CopyRule {
                    to: c.to.trim().to_string(),
                    endpoint: c.endpoint,
                    key_file: c.key_file.map(Into::into),
                    passphrase_file: c.passphrase_file.map(Into::into),
                })
            }
        };
        Ok(Policy {
            time_zone_name: raw.timezone.trim().to_string(),
            time_zone,
            schedule,
            instant_restore_days,
            retention,
            boot_verify,
            copy,
        })
    }

    /// The next `n` runs of the schedule strictly after `after`, in the
    /// policy's zone (see [`Schedule::next_runs`]).
    ///
    /// # Errors
    /// Only at the ends of the representable time range.
    pub fn next_runs(&self, after: Timestamp, n: usize) -> Result<Vec<jiff::Zoned>> {
        self.schedule.next_runs(&self.time_zone, after, n)
    }

    /// Which points to keep, and why (see [`Retention::apply`]).
    pub fn retain(&self, points: &[PointRef], now: Timestamp) -> Vec<Retained> {
        self.retention.apply(points, now)
    }

    /// The policy in a few lines of English, for `vmbackup policy check`.
    pub fn summary(&self) -> Vec<String> {
        let mut out = vec![
            format!("time zone: {}", self.time_zone_name),
            format!("schedule: {}", self.schedule.describe()),
            format!("instant restore: snapshots kept {} days", self.instant_restore_days),
        ];
        out.extend(self.retention.summary().into_iter().map(|l| format!("retention: {l}")));
        if let Some(b) = &self.boot_verify {
            let script = b.script.as_ref().map(|s| format!(", then {}", s.display())).unwrap_or_default();
            out.push(format!(
                "boot verification: the newest point of a libvirt VM when none was verified in {} days \
                 ({} s for the guest agent{script})",
                b.every_days, b.timeout_secs
            ));
        }
        if let Some(c) = &self.copy {
            out.push(format!("copy: each new point to {} after its backup", c.to));
        }
        out
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text.get(..byte).map_or(0, |t| t.matches('\n').count()) + 1
}

fn check_schedule(raw: RawSchedule) -> Result<Schedule> {
    let freq = raw.frequency.trim().to_ascii_lowercase();
    let hourly_only = [
        ("schedule.every_hours", raw.every_hours.is_some()),
        ("schedule.window_start", raw.window_start.is_some()),
        ("schedule.window_hours", raw.window_hours.is_some()),
    ];
    let times = |times: Option<Vec<String>>| -> Result<Vec<Time>> {
        let v = times.ok_or_else(|| bad("schedule.times", format!("a {freq} schedule needs times")))?;
        non_empty("schedule.times", &v)?;
        let mut t = v.iter().map(|s| parse_time("schedule.times", s)).collect::<Result<Vec<_>>>()?;
        no_duplicates("schedule.times", &t)?;
        t.sort();
        Ok(t)
    };
    match freq.as_str() {
        "daily" | "weekly" => {
            if let Some((f, _)) = hourly_only.iter().find(|(_, set)| *set) {
                return Err(bad(f, format!("only an hourly schedule has it, not a {freq} one")));
            }
            let t = times(raw.times)?;
            if freq == "daily" {
                if raw.days.is_some() {
                    return Err(bad("schedule.days", "a daily schedule runs every day; use frequency = \"weekly\""));
                }
                Ok(Schedule::Daily { times: t })
            } else {
                let days = raw.days.ok_or_else(|| bad("schedule.days", "a weekly schedule needs days"))?;
                let mut days = parse_weekdays("schedule.days", &days)?;
                days.sort_by_key(|d| d.to_monday_zero_offset());
                Ok(Schedule::Weekly { days, times: t })
            }
        }
        "hourly" => {
            if raw.times.is_some() {
                return Err(bad("schedule.times", "an hourly schedule runs every_hours from window_start"));
            }
            if raw.days.is_some() {
                return Err(bad("schedule.days", "an hourly schedule runs every day"));
            }
            let every = raw.every_hours.ok_or_else(|| bad("schedule.every_hours", "an hourly schedule needs it"))?;
            let every_hours = u8::try_from(every)
                .ok()
                .filter(|e| EVERY_HOURS.contains(e))
                .ok_or_else(|| bad("schedule.every_hours", format!("{every} is not one of 4, 6, 8 or 12")))?;
            let start = raw.window_start.ok_or_else(|| bad("schedule.window_start", "an hourly schedule needs it"))?;
            let window_start = parse_time("schedule.window_start", &start)?;
            let window_hours = match raw.window_hours {
                Some(h) => in_range("schedule.window_hours", h, 1..=24)? as u8,
                None => 24,
            };
            Ok(Schedule::Hourly { every_hours, window_start, window_hours })
        }
        _ => Err(bad("schedule.frequency", format!("{:?} is not daily, weekly or hourly", raw.frequency))),
    }
}

/// The TOML of a policy, unchecked.
fn parse_raw(text: &str) -> Result<RawPolicy> {
    toml::from_str(text).map_err(|e| {
        let why = e.message().to_string();
        let at = e.span().map(|s| line_of(text, s.start)).map(|l| format!(" (line {l})")).unwrap_or_default();
        Error::invalid(format!("policy{at}"), why)
    })
}

/// Reads a policy file and parses it with `parse`; errors name the file.
fn read_policy_file<T>(path: &Path, parse: fn(&str) -> Result<T>) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read policy", path, e))?;
    parse(&text).map_err(|e| match e {
        Error::InvalidArgument { what, why } => {
            Error::InvalidArgument { what: format!("{what} in {}", path.display()), why }
        }
        other => other,
    })
}

fn check_time_zone(name: &str) -> Result<TimeZone> {
    TimeZone::get(name.trim()).map_err(|e| bad("timezone", format!("{name:?} is not a known IANA time zone: {e}")))
}

/// `weekly_days`: the days of a weekly schedule, which weekday-based rules
/// must fall on; None for any other schedule, or none.
fn check_retention(raw: RawRetention, time_zone: TimeZone, weekly_days: Option<&[Weekday]>) -> Result<Retention> {
    let mut r = Retention::new(time_zone);
    // Weekday-based rules on days a weekly schedule never runs keep nothing.
    let on_schedule = |field: &str, days: &[Weekday]| -> Result<()> {
        if let Some(sched) = weekly_days
            && let Some(d) = days.iter().find(|d| !sched.contains(d))
        {
            return Err(bad(
                field,
                format!("{} is not a day of the weekly schedule (schedule.days)", weekday_name(*d)),
            ));
        }
        Ok(())
    };
    let selector_on_schedule = |field: &str, sel: &DaySelector| -> Result<()> {
        match sel {
            DaySelector::DaysOfMonth(_) if weekly_days.is_some() => Err(bad(
                &format!("{field}.days_of_month"),
                "a weekly schedule does not run on every date; pick days by weekdays and weeks_of_month",
            )),
            DaySelector::Weekdays { weekdays, .. } => on_schedule(&format!("{field}.weekdays"), weekdays),
            _ => Ok(()),
        }
    };
    if let Some(n) = raw.keep_last {
        r.keep_last = Some(in_range("retention.keep_last", n, KEEP_LAST)?);
    }
    if let Some(d) = raw.daily {
        if weekly_days.is_some() {
            return Err(bad("retention.daily", "a weekly schedule makes no daily points; use retention.weekly"));
        }
        r.daily_days = Some(in_range("retention.daily.days", d.days, DAILY_DAYS)?);
    }
    if let Some(w) = raw.weekly {
        let weeks = in_range("retention.weekly.weeks", w.weeks, WEEKLY_WEEKS)?;
        let days = parse_weekdays("retention.weekly.days", &w.days)?;
        on_schedule("retention.weekly.days", &days)?;
        r.weekly = Some(WeeklyRule { weeks, days });
    }
    if let Some(m) = raw.monthly {
        let months = in_range("retention.monthly.months", m.months, MONTHLY_MONTHS)?;
        let on = parse_selector("retention.monthly", m.days_of_month, m.weekdays, m.weeks_of_month)?;
        selector_on_schedule("retention.monthly", &on)?;
        r.monthly = Some(MonthlyRule { months, on });
    }
    if let Some(y) = raw.yearly {
        let years = in_range("retention.yearly.years", y.years, YEARLY_YEARS)?;
        non_empty("retention.yearly.months_of_year", &y.months_of_year)?;
        let months = y
            .months_of_year
            .iter()
            .map(|s| parse_month("retention.yearly.months_of_year", s))
            .collect::<Result<Vec<_>>>()?;
        no_duplicates("retention.yearly.months_of_year", &months)?;
        let on = parse_selector("retention.yearly", y.days_of_month, y.weekdays, y.weeks_of_month)?;
        selector_on_schedule("retention.yearly", &on)?;
        r.yearly = Some(YearlyRule { years, months, on });
    }
    if let Some(j) = raw.job_logs {
        r.job_log_days = in_range("retention.job_logs.days", j.days, JOB_LOG_DAYS)?;
    }
    if r.keep_last.is_none()
        && r.daily_days.is_none()
        && r.weekly.is_none()
        && r.monthly.is_none()
        && r.yearly.is_none()
    {
        return Err(bad("retention", "no rule: give keep_last, daily, weekly, monthly or yearly"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "timezone = \"Europe/Berlin\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\ndaily = { days = 30 }\n";

    fn err_of(text: &str) -> String {
        match Policy::from_toml_str(text) {
            Ok(_) => panic!("accepted a bad policy:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn retention_alone_needs_no_schedule_but_a_policy_does() {
        let text = "timezone = \"Europe/Berlin\"\n[retention]\ndaily = { days = 30 }\n";
        let r = Policy::retention_from_toml_str(text).expect("retention alone");
        assert_eq!(r.daily_days, Some(30));
        assert!(err_of(text).contains("a policy needs a [schedule] table"), "{}", err_of(text));
        // With a schedule, the rules are checked against it.
        assert_eq!(
            Policy::retention_from_toml_str(BASE).expect("whole"),
            Policy::from_toml_str(BASE).expect("p").retention
        );
        let weekly = BASE.replace("frequency = \"daily\"", "frequency = \"weekly\"\ndays = [\"mon\"]");
        let e = Policy::retention_from_toml_str(&weekly).expect_err("daily rules on a weekly schedule");
        assert!(e.to_string().contains("retention.daily"), "{e}");
        // Bad rules are refused alike.
        let e = Policy::retention_from_toml_str("timezone = \"UTC\"\n[retention]\nkeep_last = 0\n").expect_err("0");
        assert!(e.to_string().contains("retention.keep_last"), "{e}");
    }

    #[test]
    fn a_full_policy_parses() {
        let p = Policy::from_toml_str(
            r#"
            timezone = "America/New_York"
            instant_restore_days = 5
            [schedule]
            frequency = "weekly"
            days = ["sun", "Wednesday"]
            times = ["23:30", "01:00"]
            [retention]
            keep_last = 2
            weekly = { weeks = 12, days = ["sunday"] }
            monthly = { months = 12, weekdays = ["sunday"], weeks_of_month = ["first", "last"] }
            yearly = { years = 5, months_of_year = ["jan", "december"], weekdays = ["wed"], weeks_of_month = ["fourth"] }
            job_logs = { days = 400 }
            "#,
        )
        .expect("valid");
        assert_eq!(p.instant_restore_days, 5);
        assert_eq!(
            p.schedule,
            Schedule::Weekly {
                days: vec![Weekday::Wednesday, Weekday::Sunday],
                times: vec![Time::constant(1, 0, 0, 0), Time::constant(23, 30, 0, 0)]
            }
        );
        assert_eq!(p.retention.keep_last, Some(2));
        assert_eq!(p.retention.job_log_days, 400);
        assert!(p.summary().len() >= 6);
    }

    /// Each bad policy is refused with an error naming its field.
    #[test]
    fn bad_policies_name_their_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("days = 30", "days = 6", "retention.daily.days"),
            ("days = 30", "days = 10000", "retention.daily.days"),
            ("daily = { days = 30 }", "weekly = { weeks = 0, days = [\"sun\"] }", "retention.weekly.weeks"),
            ("daily = { days = 30 }", "weekly = { weeks = 5164, days = [\"sun\"] }", "retention.weekly.weeks"),
            ("daily = { days = 30 }", "monthly = { months = 1189, days_of_month = [1] }", "retention.monthly.months"),
            (
                "daily = { days = 30 }",
                "monthly = { months = 3, days_of_month = [29] }",
                "retention.monthly.days_of_month",
            ),
            ("daily = { days = 30 }", "monthly = { months = 3, days_of_month = [\"first\"] }", "days_of_month"),
            ("daily = { days = 30 }", "monthly = { months = 3, days_of_month = [1, 1] }", "days_of_month"),
            ("daily = { days = 30 }", "monthly = { months = 3 }", "retention.monthly"),
            (
                "daily = { days = 30 }",
                "monthly = { months = 3, days_of_month = [1], weekdays = [\"sun\"], weeks_of_month = [\"last\"] }",
                "retention.monthly",
            ),
            (
                "daily = { days = 30 }",
                "monthly = { months = 3, weekdays = [\"sun\"] }",
                "retention.monthly.weeks_of_month",
            ),
            (
                "daily = { days = 30 }",
                "monthly = { months = 3, weekdays = [\"sun\"], weeks_of_month = [\"fifth\"] }",
                "weeks_of_month",
            ),
            (
                "daily = { days = 30 }",
                "yearly = { years = 100, months_of_year = [\"jan\"], days_of_month = [1] }",
                "retention.yearly.years",
            ),
            (
                "daily = { days = 30 }",
                "yearly = { years = 1, months_of_year = [\"smarch\"], days_of_month = [1] }",
                "months_of_year",
            ),
            (
                "daily = { days = 30 }",
                "yearly = { years = 1, months_of_year = [], days_of_month = [1] }",
                "months_of_year",
            ),
            ("daily = { days = 30 }", "keep_last = 0", "retention.keep_last"),
            ("daily = { days = 30 }", "daily = { days = 30 }\njob_logs = { days = 0 }", "retention.job_logs.days"),
            ("daily = { days = 30 }", "job_logs = { days = 90 }", "retention"),
            ("daily = { days = 30 }", "", "retention"),
            ("daily = { days = 30 }", "dayly = { days = 30 }", "dayly"),
            ("Europe/Berlin", "Europe/Atlantis", "timezone"),
            ("times = [\"02:00\"]", "times = [\"25:00\"]", "schedule.times"),
            ("times = [\"02:00\"]", "times = [\"02:00\", \"02:00\"]", "schedule.times"),
            ("times = [\"02:00\"]", "times = []", "schedule.times"),
            ("times = [\"02:00\"]", "times = [\"02:00\"]\nevery_hours = 4", "schedule.every_hours"),
            ("times = [\"02:00\"]", "times = [\"02:00\"]\ndays = [\"mon\"]", "schedule.days"),
            ("frequency = \"daily\"", "frequency = \"monthly\"", "schedule.frequency"),
            ("frequency = \"daily\"", "frequency = \"weekly\"", "schedule.days"),
            (
                "frequency = \"daily\"\ntimes = [\"02:00\"]",
                "frequency = \"hourly\"\nevery_hours = 5\nwindow_start = \"08:00\"",
                "schedule.every_hours",
            ),
            (
                "frequency = \"daily\"\ntimes = [\"02:00\"]",
                "frequency = \"hourly\"\nevery_hours = 4\nwindow_start = \"08:00\"\nwindow_hours = 25",
                "schedule.window_hours",
            ),
            (
                "frequency = \"daily\"\ntimes = [\"02:00\"]",
                "frequency = \"hourly\"\nevery_hours = 4",
                "schedule.window_start",
            ),
            ("frequency = \"daily\"", "frequency = \"weekly\"\ndays = [\"sun\"]", "retention.daily"),
            (
                "timezone = \"Europe/Berlin\"",
                "timezone = \"Europe/Berlin\"\ninstant_restore_days = 31",
                "instant_restore_days",
            ),
            (
                "timezone = \"Europe/Berlin\"",
                "timezone = \"Europe/Berlin\"\ninstant_restore_days = 0",
                "instant_restore_days",
            ),
            ("days = 30", "days = 7", "instant_restore_days"),
        ];
        for (from, to, field) in cases {
            assert!(BASE.contains(from), "case {from:?} does not apply");
            let mut text = BASE.replacen(from, to, 1);
            if *field == "instant_restore_days" && *to == "days = 7" {
                text = text.replacen(
                    "timezone = \"Europe/Berlin\"",
                    "timezone = \"Europe/Berlin\"\ninstant_restore_days = 8",
                    1,
                );
            }
            let e = err_of(&text);
            assert!(e.contains(field), "error for {to:?} does not name {field}: {e}");
        }
        Policy::from_toml_str(BASE).expect("the base policy is valid");
    }

    #[test]
    fn weekly_schedule_contradictions() {
        let weekly = "timezone = \"UTC\"\n[schedule]\nfrequency = \"weekly\"\ndays = [\"sunday\"]\ntimes = [\"02:00\"]\n[retention]\n";
        let e = err_of(&format!("{weekly}weekly = {{ weeks = 4, days = [\"monday\"] }}"));
        assert!(e.contains("retention.weekly.days"), "{e}");
        let e = err_of(&format!("{weekly}monthly = {{ months = 4, days_of_month = [1] }}"));
        assert!(e.contains("retention.monthly.days_of_month"), "{e}");
        let e = err_of(&format!(
            "{weekly}yearly = {{ years = 4, months_of_year = [\"jan\"], weekdays = [\"sat\"], weeks_of_month = [\"first\"] }}"
        ));
        assert!(e.contains("retention.yearly.weekdays"), "{e}");
        Policy::from_toml_str(&format!(
            "{weekly}weekly = {{ weeks = 4, days = [\"sunday\"] }}\nyearly = {{ years = 4, months_of_year = [\"jan\"], weekdays = [\"sun\"], weeks_of_month = [\"first\"] }}"
        ))
        .expect("valid weekly policy");
    }
}
