//! Policies, prune and gc: retention over two years of points with a fake
//! clock (DST changes, month ends, leap years), the schedule across DST, and
//! prune + gc on a real vault: it shrinks by what the removed points alone
//! held, and every remaining point restores bit for bit and verifies.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use backup_core::*;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use testkit::Rng;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

/// A fake clock's "now": a civil time in a zone.
fn local(zone: &str, civil: &str) -> Timestamp {
    let dt: jiff::civil::DateTime = civil.parse().expect("civil time");
    dt.to_zoned(TimeZone::get(zone).expect("zone")).expect("zoned").timestamp()
}

/// Two years of points made by the policy's own schedule, from `from`
/// (a UTC instant) to `until`.
fn points_of(policy: &Policy, from: &str, until: &str) -> Vec<PointRef> {
    let runs = policy.next_runs(ts(from), 2000).expect("runs");
    runs.iter()
        .filter(|z| z.timestamp() <= ts(until))
        .map(|z| PointRef::new(z.strftime("%Y-%m-%d").to_string(), z.timestamp()))
        .collect()
}

fn policy(zone: &str, schedule: &str, retention: &str) -> Policy {
    Policy::from_toml_str(&format!("timezone = \"{zone}\"\n[schedule]\n{schedule}\n[retention]\n{retention}\n"))
        .expect("valid policy")
}

struct Case {
    name: &'static str,
    zone: &'static str,
    schedule: &'static str,
    retention: &'static str,
    /// First and last instant of the points (UTC).
    span: (&'static str, &'static str),
    /// "Now" as the zone's civil time.
    now: &'static str,
    /// How many points two years of the schedule make.
    points: usize,
    /// The local dates of the points kept, with why.
    expected: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        // Points at 00:30 local are 23:30 or 22:30 UTC the day before, so
        // bucketing by UTC date instead of local date would shift every
        // day; the span crosses four DST changes and 2024-02-29.
        name: "berlin: month ends and a leap day",
        zone: "Europe/Berlin",
        schedule: "frequency = \"daily\"\ntimes = [\"00:30\"]",
        retention: "daily = { days = 7 }\nweekly = { weeks = 4, days = [\"sunday\"] }\n\
                    monthly = { months = 6, days_of_month = [\"last\"] }\n\
                    yearly = { years = 2, months_of_year = [\"february\"], days_of_month = [\"last\"] }",
        span: ("2023-12-31T12:00:00Z", "2025-12-31T12:00:00Z"),
        now: "2025-12-31T12:00",
        points: 731,
        expected: &[
            ("2024-02-29", "yearly"),
            ("2025-02-28", "yearly"),
            ("2025-07-31", "monthly"),
            ("2025-08-31", "monthly"),
            ("2025-09-30", "monthly"),
            ("2025-10-31", "monthly"),
            ("2025-11-30", "monthly"),
            ("2025-12-07", "weekly"),
            ("2025-12-14", "weekly"),
            ("2025-12-21", "weekly"),
            ("2025-12-25", "daily"),
            ("2025-12-26", "daily"),
            ("2025-12-27", "daily"),
            ("2025-12-28", "daily weekly"),
            ("2025-12-29", "daily"),
            ("2025-12-30", "daily"),
            ("2025-12-31", "newest daily monthly"),
        ],
    },
    Case {
        // 23:30 in New York is 03:30 or 04:30 UTC the next day. "Now" is
        // just after midnight: today has no point yet, so daily 7 keeps 6.
        // Weekdays and weeks of the month combine: the first and the last
        // sunday and friday of each month.
        name: "new york: weekdays of the month, keep-last",
        zone: "America/New_York",
        schedule: "frequency = \"daily\"\ntimes = [\"23:30\"]",
        retention: "keep_last = 3\ndaily = { days = 7 }\nweekly = { weeks = 2, days = [\"wednesday\", \"saturday\"] }\n\
                    monthly = { months = 3, weekdays = [\"sunday\", \"friday\"], weeks_of_month = [\"first\", \"last\"] }\n\
                    yearly = { years = 2, months_of_year = [\"november\"], weekdays = [\"thursday\"], weeks_of_month = [\"fourth\"] }",
        span: ("2024-01-01T12:00:00Z", "2026-01-01T12:00:00Z"),
        now: "2026-01-01T00:10",
        points: 731,
        expected: &[
            ("2024-11-28", "yearly"),
            ("2025-10-03", "monthly"),
            ("2025-10-05", "monthly"),
            ("2025-10-26", "monthly"),
            ("2025-10-31", "monthly"),
            ("2025-11-02", "monthly"),
            ("2025-11-07", "monthly"),
            ("2025-11-27", "yearly"),
            ("2025-11-28", "monthly"),
            ("2025-11-30", "monthly"),
            ("2025-12-05", "monthly"),
            ("2025-12-07", "monthly"),
            ("2025-12-20", "weekly"),
            ("2025-12-24", "weekly"),
            ("2025-12-26", "daily monthly"),
            ("2025-12-27", "daily weekly"),
            ("2025-12-28", "daily monthly"),
            ("2025-12-29", "last daily"),
            ("2025-12-30", "last daily"),
            ("2025-12-31", "newest last daily weekly"),
        ],
    },
    Case {
        // "Now" is the spring-forward day itself; a month back from March 31
        // is February 29.
        name: "berlin: on a DST day in a leap year",
        zone: "Europe/Berlin",
        schedule: "frequency = \"daily\"\ntimes = [\"02:30\"]",
        retention: "daily = { days = 7 }\nmonthly = { months = 3, days_of_month = [\"last\"] }\n\
                    yearly = { years = 2, months_of_year = [\"feb\"], days_of_month = [\"last\"] }",
        span: ("2022-03-31T12:00:00Z", "2024-03-31T12:00:00Z"),
        now: "2024-03-31T12:00",
        points: 731,
        expected: &[
            ("2023-02-28", "yearly"),
            ("2024-01-31", "monthly"),
            ("2024-02-29", "monthly yearly"),
            ("2024-03-25", "daily"),
            ("2024-03-26", "daily"),
            ("2024-03-27", "daily"),
            ("2024-03-28", "daily"),
            ("2024-03-29", "daily"),
            ("2024-03-30", "daily"),
            ("2024-03-31", "newest daily monthly"),
        ],
    },
    Case {
        // Sundays at 01:30: 2024-11-03 and 2025-11-02 repeat 01:00..02:00
        // in New York (the first 01:30 counts).
        name: "new york: weekly schedule",
        zone: "America/New_York",
        schedule: "frequency = \"weekly\"\ndays = [\"sunday\"]\ntimes = [\"01:30\"]",
        retention: "weekly = { weeks = 8, days = [\"sunday\"] }\n\
                    monthly = { months = 12, weekdays = [\"sunday\"], weeks_of_month = [\"first\"] }\n\
                    yearly = { years = 2, months_of_year = [\"january\"], weekdays = [\"sunday\"], weeks_of_month = [\"first\"] }",
        span: ("2024-01-01T12:00:00Z", "2026-01-01T00:00:00Z"),
        now: "2025-12-31T12:00",
        points: 104,
        expected: &[
            ("2024-01-07", "yearly"),
            ("2025-01-05", "monthly yearly"),
            ("2025-02-02", "monthly"),
            ("2025-03-02", "monthly"),
            ("2025-04-06", "monthly"),
            ("2025-05-04", "monthly"),
            ("2025-06-01", "monthly"),
            ("2025-07-06", "monthly"),
            ("2025-08-03", "monthly"),
            ("2025-09-07", "monthly"),
            ("2025-10-05", "monthly"),
            ("2025-11-02", "monthly"),
            ("2025-11-09", "weekly"),
            ("2025-11-16", "weekly"),
            ("2025-11-23", "weekly"),
            ("2025-11-30", "weekly"),
            ("2025-12-07", "weekly monthly"),
            ("2025-12-14", "weekly"),
            ("2025-12-21", "weekly"),
            ("2025-12-28", "newest weekly"),
        ],
    },
];

#[test]
fn two_years_of_points_keep_exactly_the_expected_set() {
    for case in CASES {
        let p = policy(case.zone, case.schedule, case.retention);
        let points = points_of(&p, case.span.0, case.span.1);
        assert_eq!(points.len(), case.points, "{}: points made by two years of the schedule", case.name);
        let dates: BTreeSet<&str> = points.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(dates.len(), points.len(), "{}: one point per local date", case.name);
        let now = local(case.zone, case.now);
        let verdicts = p.retain(&points, now);
        assert_eq!(verdicts.len(), points.len(), "{}", case.name);
        let kept: Vec<(String, String)> = verdicts
            .iter()
            .filter(|v| v.keep())
            .map(|v| (v.id.clone(), v.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" ")))
            .collect();
        let expected: Vec<(String, String)> =
            case.expected.iter().map(|(d, r)| (d.to_string(), r.to_string())).collect();
        assert_eq!(kept, expected, "{}: kept points and their reasons", case.name);
        // Pure: the same input in another order gives the same answer.
        let mut shuffled = points.clone();
        shuffled.reverse();
        assert_eq!(p.retain(&shuffled, now), verdicts, "{}: order of input", case.name);
    }
}

#[test]
fn daily_points_keep_their_local_time_across_dst() {
    let p = policy("Europe/Berlin", "frequency = \"daily\"\ntimes = [\"00:30\"]", "daily = { days = 7 }");
    let points = points_of(&p, "2023-12-31T12:00:00Z", "2025-12-31T12:00:00Z");
    let tz = TimeZone::get("Europe/Berlin").expect("zone");
    for pt in &points {
        let z = pt.time.to_zoned(tz.clone());
        assert_eq!(z.strftime("%H:%M").to_string(), "00:30", "point {}", pt.id);
    }
    // Winter: 23:30 UTC the day before; summer: 22:30 UTC.
    let by_date: HashMap<&str, Timestamp> = points.iter().map(|p| (p.id.as_str(), p.time)).collect();
    assert_eq!(by_date["2025-03-30"], ts("2025-03-29T23:30:00Z"));
    assert_eq!(by_date["2025-03-31"], ts("2025-03-30T22:30:00Z"));
    assert_eq!(by_date["2025-10-26"], ts("2025-10-25T22:30:00Z"));
    assert_eq!(by_date["2025-10-27"], ts("2025-10-26T23:30:00Z"));
}

#[test]
fn schedule_next_runs_across_dst() {
    struct Run {
        name: &'static str,
        zone: &'static str,
        schedule: &'static str,
        after: &'static str,
        expected: &'static [&'static str],
    }
    let cases = [
        Run {
            name: "spring forward: 02:30 does not exist, runs at 03:30",
            zone: "Europe/Berlin",
            schedule: "frequency = \"daily\"\ntimes = [\"02:30\"]",
            after: "2025-03-29T12:00:00Z",
            expected: &["2025-03-30T01:30:00Z", "2025-03-31T00:30:00Z", "2025-04-01T00:30:00Z"],
        },
        Run {
            name: "fall back: 02:30 happens twice, runs once at the first",
            zone: "Europe/Berlin",
            schedule: "frequency = \"daily\"\ntimes = [\"02:30\"]",
            after: "2025-10-25T12:00:00Z",
            expected: &["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"],
        },
        Run {
            name: "two times that the gap makes one instant run once",
            zone: "America/New_York",
            schedule: "frequency = \"daily\"\ntimes = [\"02:30\", \"03:30\", \"01:30\"]",
            after: "2025-03-09T00:00:00Z",
            expected: &["2025-03-09T06:30:00Z", "2025-03-09T07:30:00Z", "2025-03-10T05:30:00Z"],
        },
        Run {
            name: "every 4 hours in civil time on the short day",
            zone: "America/New_York",
            schedule: "frequency = \"hourly\"\nevery_hours = 4\nwindow_start = \"00:00\"",
            after: "2025-03-09T04:00:00Z",
            expected: &[
                "2025-03-09T05:00:00Z",
                "2025-03-09T08:00:00Z",
                "2025-03-09T12:00:00Z",
                "2025-03-09T16:00:00Z",
                "2025-03-09T20:00:00Z",
                "2025-03-10T00:00:00Z",
                "2025-03-10T04:00:00Z",
            ],
        },
        Run {
            name: "every 6 hours from 01:00 on the long day",
            zone: "America/New_York",
            schedule: "frequency = \"hourly\"\nevery_hours = 6\nwindow_start = \"01:00\"\nwindow_hours = 24",
            after: "2025-11-02T00:00:00Z",
            expected: &["2025-11-02T05:00:00Z", "2025-11-02T12:00:00Z", "2025-11-02T18:00:00Z", "2025-11-03T00:00:00Z"],
        },
        Run {
            name: "hourly window of 12 hours",
            zone: "Europe/Berlin",
            schedule: "frequency = \"hourly\"\nevery_hours = 8\nwindow_start = \"06:00\"\nwindow_hours = 12",
            after: "2025-01-01T00:00:00Z",
            expected: &["2025-01-01T05:00:00Z", "2025-01-01T13:00:00Z", "2025-01-02T05:00:00Z"],
        },
        Run {
            name: "weekly on a spring-forward sunday",
            zone: "America/New_York",
            schedule: "frequency = \"weekly\"\ndays = [\"sunday\", \"wednesday\"]\ntimes = [\"02:30\"]",
            after: "2025-03-08T00:00:00Z",
            expected: &["2025-03-09T07:30:00Z", "2025-03-12T06:30:00Z", "2025-03-16T06:30:00Z"],
        },
        Run {
            name: "southern hemisphere: Sydney falls back in April",
            zone: "Australia/Sydney",
            schedule: "frequency = \"daily\"\ntimes = [\"02:30\"]",
            after: "2025-04-05T00:00:00Z",
            expected: &["2025-04-05T15:30:00Z", "2025-04-06T16:30:00Z"],
        },
    ];
    for c in cases {
        let p = policy(c.zone, c.schedule, "keep_last = 5");
        let got: Vec<String> = p
            .next_runs(ts(c.after), c.expected.len())
            .expect("runs")
            .iter()
            .map(|z| z.timestamp().to_string())
            .collect();
        assert_eq!(got, c.expected, "{}", c.name);
    }
}

// ---------------------------------------------------------------------------
// Prune and gc on a real vault.

const BLOCK: usize = 64 << 10;

/// Bytes of every file in the vault but its lock and config.
fn vault_bytes(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| {
                let m = e.metadata().expect("metadata");
                if m.is_dir() { walk(&e.path()) } else { m.len() }
            })
            .sum()
    }
    ["packs", "index", "segments", "points", "tmp"].iter().map(|d| walk(&root.join(d))).sum()
}

fn files_under(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(p: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.insert(e.path());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, &mut out);
    out
}

/// The chunks and segments a point references.
fn refs_of(vault: &Vault, p: &PointManifest) -> (HashSet<ContentId>, HashSet<ContentId>) {
    let mut chunks = HashSet::new();
    let mut segments = HashSet::new();
    for d in &p.disks {
        for s in &d.segments {
            segments.insert(*s);
            chunks.extend(vault.segment(s).expect("segment").into_iter().flatten());
        }
    }
    (chunks, segments)
}

fn segment_file(vault: &Vault, id: &ContentId) -> PathBuf {
    let h = id.to_hex();
    vault.path().join("segments").join(&h[..2]).join(h)
}

fn age(path: &Path, by: Duration) {
    let t = SystemTime::now() - by;
    fs::File::options().write(true).open(path).and_then(|f| f.set_modified(t)).expect("set mtime");
}

/// gc with no grace period, run as if the soft-delete days of every point
/// pruned so far were over (15 days from now).
fn gc_now(threshold: f64) -> GcOptions {
    let mut o = GcOptions::default();
    o.grace = Duration::ZERO;
    o.now = Some(SystemTime::now() + Duration::from_secs(15 * 86_400));
    o.repack_threshold = threshold;
    o
}

fn keep_last(n: u32) -> Retention {
    policy("UTC", "frequency = \"daily\"\ntimes = [\"02:00\"]", &format!("keep_last = {n}")).retention
}

/// A vault with small packs, two VMs sharing some data, and the bytes of
/// every disk of every point.
fn build_vault(dir: &Path) -> (Vault, HashMap<String, Vec<u8>>) {
    let mut options = VaultOptions::default();
    options.pack_target_size = 256 << 10;
    let vault = Vault::init_with(dir.join("vault"), options).expect("init");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut contents = HashMap::new();
    let shared = rng.bytes(4 * BLOCK);
    for (vm, rounds) in [("web", 8), ("db", 3)] {
        let image = dir.join(format!("{vm}.img"));
        let mut data = rng.bytes(24 * BLOCK);
        data[..shared.len()].copy_from_slice(&shared);
        data[20 * BLOCK..21 * BLOCK].fill(0);
        let v = Vm::from_images(vm, &[&image]).expect("vm");
        for round in 0..rounds {
            if round > 0 {
                // Blocks 22 and 23 change every round: the packs of rounds
                // that change nothing else die whole once later rounds exist.
                let fresh = rng.bytes(2 * BLOCK);
                data[22 * BLOCK..24 * BLOCK].copy_from_slice(&fresh);
            }
            if round > 2 {
                // A few more blocks change; block 5 flips back and forth.
                for _ in 0..3 {
                    let b = 6 + (rng.next() % 14) as usize;
                    let fresh = rng.bytes(BLOCK);
                    data[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&fresh);
                }
                data[5 * BLOCK] ^= 1;
            }
            fs::write(&image, &data).expect("write image");
            let r = backup(&vault, &ImageFileProvider::new(), &v, &BackupOptions::default()).expect("backup");
            contents.insert(r.point.id.clone(), data.clone());
        }
    }
    (vault, contents)
}

fn assert_restores(vault: &Vault, contents: &HashMap<String, Vec<u8>>, dir: &Path) {
    let points = vault.points(None).expect("points");
    assert!(!points.is_empty());
    for p in &points {
        let out = dir.join(format!("restore-{}", p.id));
        restore_disk_to_path(vault, p, "0", &out, &RestoreOptions::default()).expect("restore");
        assert!(fs::read(&out).expect("read") == contents[&p.id], "point {} of vm {} differs", p.id, p.vm);
        fs::remove_file(out).expect("clean");
    }
    let report = verify(vault, &VerifyOptions::default()).expect("verify");
    assert!(report.ok(), "verify: {:?}", report.problems);
}

#[test]
fn prune_and_gc_shrink_by_what_the_removed_points_alone_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, contents) = build_vault(dir.path());
    let all = vault.points(None).expect("points");
    assert_eq!(all.len(), 11);
    for f in files_under(vault.path()) {
        age(&f, Duration::from_secs(3 * 3600));
    }

    let plan = prune_plan(&vault, &keep_last(3), Timestamp::now(), &PruneOptions::default()).expect("plan");
    let removed: Vec<&PlannedPoint> = plan.to_remove().collect();
    assert_eq!(removed.len(), 5, "web keeps 3 of 8, db all 3");
    assert!(removed.iter().all(|p| p.vm == "web"));
    assert!(plan.unreadable.is_empty());

    // What the removed points alone held.
    let removed_ids: HashSet<&str> = removed.iter().map(|p| p.id.as_str()).collect();
    let (mut dead_c, mut dead_s, mut live_c, mut live_s) =
        (HashSet::new(), HashSet::new(), HashSet::new(), HashSet::new());
    for p in &all {
        let (c, s) = refs_of(&vault, p);
        if removed_ids.contains(p.id.as_str()) {
            dead_c.extend(c);
            dead_s.extend(s);
        } else {
            live_c.extend(c);
            live_s.extend(s);
        }
    }
    let only_c: Vec<ContentId> = dead_c.difference(&live_c).copied().collect();
    let only_s: Vec<ContentId> = dead_s.difference(&live_s).copied().collect();
    assert!(!only_c.is_empty() && !only_s.is_empty(), "the removed points must hold data of their own");
    let only_c_bytes: u64 = only_c.iter().map(|id| vault.chunk_location(id).expect("located").1.frame_len()).sum();
    let only_s_bytes: u64 =
        only_s.iter().map(|id| fs::metadata(segment_file(&vault, id)).expect("segment file").len()).sum();
    let live_frame_bytes: u64 = live_c.iter().map(|id| vault.chunk_location(id).expect("located").1.frame_len()).sum();

    let before = vault_bytes(vault.path());
    let pruned = prune(&vault, &plan).expect("prune");
    assert_eq!(pruned.removed.len(), 5);
    assert!(pruned.spared.is_empty());
    assert_eq!(vault.points(None).expect("points").len(), 6);

    // A dry run reports what gc will do, and changes nothing.
    let files = files_under(vault.path());
    let mut dry = gc_now(0.0);
    dry.dry_run = true;
    let planned = gc(&vault, &dry).expect("dry gc");
    assert_eq!(files_under(vault.path()), files, "a dry run changed the vault");

    let report = gc(&vault, &gc_now(0.0)).expect("gc");
    assert_eq!(report.chunks_removed, only_c.len() as u64);
    assert_eq!(report.chunk_bytes_removed, only_c_bytes, "chunk bytes removed");
    assert_eq!(report.segments_removed, only_s.len() as u64);
    assert_eq!(report.segment_bytes_removed, only_s_bytes, "segment bytes removed");
    assert!(report.packs_removed > 0 && report.packs_repacked > 0, "{report:?}");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    for (a, b) in [
        (planned.chunks_removed, report.chunks_removed),
        (planned.chunk_bytes_removed, report.chunk_bytes_removed),
        (planned.segments_removed, report.segments_removed),
        (planned.packs_removed, report.packs_removed),
        (planned.packs_repacked, report.packs_repacked),
    ] {
        assert_eq!(a, b, "dry run and real run differ: {planned:?} vs {report:?}");
    }

    let after = vault_bytes(vault.path());
    assert_eq!(before - after, pruned.manifest_bytes_removed + report.bytes_freed as u64);
    assert!(
        before - after >= only_c_bytes + only_s_bytes + pruned.manifest_bytes_removed,
        "the vault shrank by {} bytes, less than the {} the removed points alone held",
        before - after,
        only_c_bytes + only_s_bytes + pruned.manifest_bytes_removed
    );
    // Nothing dead is left: the packs hold the live chunks once each, plus
    // each pack's header, trailer entries and footer.
    let packs: Vec<PathBuf> = files_under(&vault.path().join("packs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    let pack_bytes: u64 = packs.iter().map(|p| fs::metadata(p).expect("pack").len()).sum();
    assert_eq!(pack_bytes, live_frame_bytes + 40 * packs.len() as u64 + 56 * live_c.len() as u64);
    assert_eq!(report.live_chunks, live_c.len() as u64);

    // Every remaining point restores bit for bit, through this handle and a new one.
    assert_restores(&vault, &contents, dir.path());
    let reopened = Vault::open(vault.path()).expect("open");
    assert_restores(&reopened, &contents, dir.path());

    // A second gc finds nothing.
    let again = gc(&vault, &gc_now(0.0)).expect("gc again");
    assert_eq!((again.chunks_removed, again.segments_removed, again.packs_removed, again.packs_repacked), (0, 0, 0, 0));
}

#[test]
fn gc_spares_what_is_newer_than_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, contents) = build_vault(dir.path());
    let plan = prune_plan(&vault, &keep_last(1), Timestamp::now(), &PruneOptions::default()).expect("plan");
    prune(&vault, &plan).expect("prune");
    let files = files_under(vault.path());
    let report = gc(&vault, &GcOptions::default()).expect("gc");
    assert_eq!((report.chunks_removed, report.segments_removed, report.packs_removed), (0, 0, 0));
    assert!(report.protected > 0);
    assert_eq!(files_under(vault.path()), files);
    assert_restores(&vault, &contents, dir.path());
}

#[test]
fn gc_removes_old_staging_and_keeps_fresh_staging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, _) = build_vault(dir.path());
    let tmp = vault.path().join("tmp");
    for name in ["backup-1-dead", "backup-2-running"] {
        fs::create_dir_all(tmp.join(name).join("packs")).expect("mkdir");
        fs::write(tmp.join(name).join("packs").join("x.pack"), b"partial").expect("write");
    }
    age(&tmp.join("backup-1-dead").join("packs").join("x.pack"), Duration::from_secs(7200));
    for d in ["backup-1-dead/packs", "backup-1-dead"] {
        let t = SystemTime::now() - Duration::from_secs(7200);
        fs::File::open(tmp.join(d)).and_then(|f| f.set_modified(t)).expect("age folder");
    }
    let mut o = GcOptions::default();
    o.grace = Duration::from_secs(600);
    let report = gc(&vault, &o).expect("gc");
    assert_eq!(report.staging_removed, 1);
    assert!(!tmp.join("backup-1-dead").exists());
    assert!(tmp.join("backup-2-running").exists());
}

/// The state a crash between "new pack published" and "old pack removed"
/// leaves (every chunk of a pack in two packs) verifies, and gc cleans it.
#[test]
fn a_vault_with_a_pack_published_twice_verifies_and_gc_cleans_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, contents) = build_vault(dir.path());
    let pack = files_under(&vault.path().join("packs")).into_iter().next().expect("a pack");
    let id = pack.file_stem().and_then(|s| s.to_str()).expect("id").to_string();
    let copy = "f".repeat(32);
    fs::copy(&pack, vault.path().join("packs").join(format!("{copy}.pack"))).expect("copy pack");
    fs::copy(
        vault.path().join("index").join(format!("{id}.idx")),
        vault.path().join("index").join(format!("{copy}.idx")),
    )
    .expect("copy idx");
    let reopened = Vault::open(vault.path()).expect("open");
    assert!(verify(&reopened, &VerifyOptions::default()).expect("verify").ok());
    for f in files_under(vault.path()) {
        age(&f, Duration::from_secs(7200));
    }
    let report = gc(&reopened, &gc_now(1.0)).expect("gc");
    assert_eq!(report.packs_removed, 1, "{report:?}");
    assert!(report.chunks_removed > 0);
    assert_restores(&reopened, &contents, dir.path());
}

#[test]
fn prune_never_removes_a_vms_newest_point_even_from_a_forged_plan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, _) = build_vault(dir.path());
    let mut plan = prune_plan(&vault, &keep_last(1), Timestamp::now(), &PruneOptions::default()).expect("plan");
    for p in &mut plan.points {
        p.reasons.clear();
    }
    let report = prune(&vault, &plan).expect("prune");
    assert_eq!(report.spared.len(), 2, "{:?}", report.spared);
    assert_eq!(vault.points(Some("web")).expect("points").len(), 1);
    assert_eq!(vault.points(Some("db")).expect("points").len(), 1);
}

#[test]
fn prune_dry_run_and_one_vm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, _) = build_vault(dir.path());
    let mut o = PruneOptions::default();
    o.vm = Some("db".into());
    o.dry_run = true;
    let plan = prune_plan(&vault, &keep_last(1), Timestamp::now(), &o).expect("plan");
    assert!(plan.points.iter().all(|p| p.vm == "db"));
    let report = prune(&vault, &plan).expect("prune");
    assert_eq!(report.removed.len(), 2);
    assert_eq!(vault.points(None).expect("points").len(), 11);
    o.vm = Some("nope".into());
    let err = prune_plan(&vault, &keep_last(1), Timestamp::now(), &o).expect_err("an unknown VM");
    assert!(matches!(err, Error::NotFound { .. }));
    assert_eq!(err.to_string(), "points of vm nope not found");
    let err = vault.find_point("nope", "latest").expect_err("an unknown VM");
    assert_eq!(err.to_string(), "points of vm nope not found");
}

#[test]
fn gc_refuses_to_run_with_a_damaged_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, _) = build_vault(dir.path());
    let bogus = vault.path().join("points").join("web").join("20250101T000000Z-000000");
    fs::write(&bogus, b"{not a manifest").expect("write");
    let files = files_under(vault.path());
    let e = gc(&vault, &gc_now(0.0)).expect_err("gc must refuse");
    assert!(e.to_string().contains("manifest"), "{e}");
    assert_eq!(files_under(vault.path()), files);
    let plan = prune_plan(&vault, &keep_last(1), Timestamp::now(), &PruneOptions::default()).expect("plan");
    assert_eq!(plan.unreadable.len(), 1);
    let mut bad = gc_now(0.0);
    bad.repack_threshold = 1.5;
    assert!(matches!(gc(&vault, &bad), Err(Error::InvalidArgument { .. })));
}

/// A vault handle opened before another process's prune and gc must not
/// deduplicate a new backup against chunks that gc removed.
#[test]
fn a_long_lived_handle_does_not_dedup_against_chunks_gc_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("root.img");
    let mut rng = Rng(77);
    let first = rng.bytes(8 * BLOCK);
    let second = rng.bytes(8 * BLOCK);
    let host = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    fs::write(&image, &first).expect("image");
    backup(&host, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup 1");
    fs::write(&image, &second).expect("image");
    backup(&host, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup 2");
    // Another process removes the first point and its chunks.
    let other = Vault::open(host.path()).expect("open");
    let plan = prune_plan(&other, &keep_last(1), Timestamp::now(), &PruneOptions::default()).expect("plan");
    prune(&other, &plan).expect("prune");
    for f in files_under(other.path()) {
        age(&f, Duration::from_secs(7200));
    }
    let report = gc(&other, &gc_now(0.0)).expect("gc");
    assert_eq!(report.chunks_removed, 8);
    // The host backs up the first content again through its old handle.
    fs::write(&image, &first).expect("image");
    let r = backup(&host, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup 3");
    let fresh = Vault::open(host.path()).expect("open");
    let mut contents = HashMap::new();
    contents.insert(r.point.id.clone(), first.clone());
    let p = fresh.find_point("web", &r.point.id).expect("point");
    let out = dir.path().join("restored");
    restore_disk_to_path(&fresh, &p, "0", &out, &RestoreOptions::default()).expect("restore of the new point");
    assert!(fs::read(&out).expect("read") == first);
    // The old handle restores too: it forgets the packs gc removed.
    fs::remove_file(&out).expect("clean");
    restore_disk_to_path(&host, &p, "0", &out, &RestoreOptions::default()).expect("restore through the old handle");
    assert!(fs::read(&out).expect("read") == first);
    assert!(contents.contains_key(&p.id));
}

/// The throttle's accuracy over a few seconds: a measurement rather than a
/// test (timing on a shared machine), run with `--ignored`.
#[test]
#[ignore = "a measurement: takes ~4 s and depends on the machine's load"]
fn throttle_holds_a_job_within_ten_percent_of_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("root.img");
    fs::write(&image, Rng(9).bytes(64 << 20)).expect("image");
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let rate = 16u64 << 20;
    let provider =
        ThrottledProvider::new(ImageFileProvider::new(), std::sync::Arc::new(Throttle::new(rate).expect("rate")));
    let start = std::time::Instant::now();
    let r = backup(&vault, &provider, &vm, &BackupOptions::default()).expect("backup");
    let secs = start.elapsed().as_secs_f64();
    let achieved = r.point.stats.totals.bytes_read as f64 / secs;
    eprintln!(
        "read {} bytes in {secs:.2} s: {:.2} MiB/s for a limit of 16 MiB/s",
        r.point.stats.totals.bytes_read,
        achieved / (1 << 20) as f64
    );
    assert!((achieved / rate as f64 - 1.0).abs() < 0.10, "achieved {achieved} B/s for a limit of {rate}");
}

/// Backups and prune + gc at the same time through two handles (each takes
/// the vault's flock as a separate process would), many times: no point
/// loses a block. gc goes on until the last backup is done (at least as
/// many rounds as there are backups), so that it cannot finish before the
/// backups have made anything to collect.
#[test]
fn backups_and_gc_at_the_same_time_lose_no_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = VaultOptions::default();
    options.pack_target_size = 128 << 10;
    let root = dir.path().join("vault");
    let host = Vault::init_with(&root, options.clone()).expect("init");
    let image = dir.path().join("root.img");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let contents = std::sync::Mutex::new(HashMap::new());
    let rounds = 25;
    let backups_done = std::sync::atomic::AtomicBool::new(false);
    /// Says the backups are over however their thread ends (a failed one
    /// must not leave gc looping).
    struct Done<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let _done = Done(&backups_done);
            let mut rng = Rng(4242);
            let mut data = rng.bytes(16 * BLOCK);
            for _ in 0..rounds {
                for _ in 0..3 {
                    let b = (rng.next() % 16) as usize;
                    let fresh = rng.bytes(BLOCK);
                    data[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&fresh);
                }
                fs::write(&image, &data).expect("image");
                let r = backup(&host, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
                contents.lock().expect("lock").insert(r.point.id.clone(), data.clone());
            }
        });
        s.spawn(|| {
            let other = Vault::open_with(&root, options.clone()).expect("open");
            let mut removed = 0;
            let mut round = 0;
            while round < rounds || !backups_done.load(std::sync::atomic::Ordering::SeqCst) {
                round += 1;
                let plan = prune_plan(&other, &keep_last(2), Timestamp::now(), &PruneOptions::default()).expect("plan");
                prune(&other, &plan).expect("prune");
                removed += gc(&other, &gc_now(0.0)).expect("gc").chunks_removed;
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(removed > 0, "gc never ran between two backups");
        });
    });
    let contents = contents.into_inner().expect("lock");
    let fresh = Vault::open(&root).expect("open");
    assert!(fresh.points(None).expect("points").len() >= 2);
    assert_restores(&fresh, &contents, dir.path());
    assert_restores(&host, &contents, dir.path());
}

/// The policy examples in the README and in the policy module's doc parse.
#[test]
fn documented_policy_examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("../README.md")).expect("README");
    let module = fs::read_to_string(root.join("src/policy/mod.rs")).expect("policy module");
    let module_doc: String = module
        .lines()
        .filter_map(|l| l.strip_prefix("///").or_else(|| l.strip_prefix("//!")))
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    for (name, text) in [("README.md", readme), ("src/policy/mod.rs", module_doc)] {
        let block = text
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap_or_else(|| panic!("{name} has no toml example"));
        let p = Policy::from_toml_str(block).unwrap_or_else(|e| panic!("the example in {name} does not parse: {e}"));
        assert!(p.next_runs(Timestamp::now(), 3).expect("runs").len() == 3);
    }
}

#[test]
fn prune_removes_the_logs_of_finished_jobs_whose_points_are_gone_once_they_are_old_enough() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let image = dir.path().join("web.img");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let mut rng = Rng(31);
    let mut contents = HashMap::new();
    for _ in 0..4 {
        let data = rng.bytes(4 * BLOCK);
        fs::write(&image, &data).expect("image");
        let r = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
        contents.insert(r.point.id, data);
    }
    // A job that commits nothing: its disk is gone.
    let data = fs::read(&image).expect("read");
    fs::remove_file(&image).expect("remove");
    backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect_err("no disk");
    fs::write(&image, data).expect("image back");
    let jobs = job_history(&vault, Some("web")).expect("jobs");
    assert_eq!(jobs.len(), 5);
    assert_eq!(jobs.iter().filter(|j| j.result == JobResult::Failed).count(), 1);

    let now = Timestamp::now();
    let retention = keep_last(2);
    assert_eq!(retention.job_log_days, DEFAULT_JOB_LOG_DAYS);
    let plan = prune_plan(&vault, &retention, now, &PruneOptions::default()).expect("plan");
    assert_eq!(plan.to_remove().count(), 2);
    assert!(plan.job_logs.is_empty(), "logs younger than 90 days stay: {:?}", plan.job_logs);

    // 100 days on: the logs of the two condemned points and of the failed
    // job go; the logs of the two kept points stay, whatever their age.
    let later = now + jiff::SignedDuration::from_hours(24 * 100);
    let mut dry = PruneOptions::default();
    dry.dry_run = true;
    let plan = prune_plan(&vault, &retention, later, &dry).expect("plan");
    let report = prune(&vault, &plan).expect("dry run");
    assert_eq!(report.job_logs_removed.len(), 3, "{:?}", report.job_logs_removed);
    assert_eq!(job_history(&vault, Some("web")).expect("jobs").len(), 5, "a dry run removes nothing");

    let mut longer = retention.clone();
    longer.job_log_days = 200;
    let plan = prune_plan(&vault, &longer, later, &PruneOptions::default()).expect("plan");
    assert!(plan.job_logs.is_empty(), "kept for 200 days: {:?}", plan.job_logs);

    let plan = prune_plan(&vault, &retention, later, &PruneOptions::default()).expect("plan");
    let report = prune(&vault, &plan).expect("prune");
    assert_eq!(report.removed.len(), 2);
    assert_eq!(report.job_logs_removed.len(), 3);
    let kept: HashSet<String> = vault.points(Some("web")).expect("points").into_iter().map(|p| p.id).collect();
    let left = job_history(&vault, Some("web")).expect("jobs");
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|j| j.point.as_ref().is_some_and(|p| kept.contains(p))), "{left:?}");
    // The pruned-point record forgets the points whose logs are gone, and
    // verify, which reads both, finds nothing amiss.
    let pruned = fs::read_to_string(vault.path().join("jobs/web/pruned.log")).unwrap_or_default();
    assert!(pruned.is_empty(), "pruned.log still names: {pruned}");
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.ok(), "verify: {:?}", report.problems);
    for p in vault.points(Some("web")).expect("points") {
        let out = dir.path().join(format!("r-{}", p.id));
        restore_disk_to_path(&vault, &p, "0", &out, &RestoreOptions::default()).expect("restore");
        assert!(fs::read(&out).expect("read") == contents[&p.id]);
    }
}
