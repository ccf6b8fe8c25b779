//! Helpers shared by vmbackup's test binaries: deterministic data, running
//! commands, child processes killed on drop.
//!
//! Dev-only: test targets take it as a dev-dependency; no shipped crate
//! depends on it. It panics freely, as tests do: a helper that cannot do
//! its job fails the test that called it, with the command and its output.
//!
//! ```
//! let a = testkit::Rng(7).bytes(100);
//! assert_eq!(a, testkit::Rng(7).bytes(100));
//! assert_eq!(testkit::run("echo", &["hi"]), "hi\n");
//! ```

pub mod guest;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift64): the same seed gives the
/// same bytes on every run, so a failing test fails again. A seed of 0
/// yields only zeros.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    // Not `Iterator::next`: it never ends, and tests read `rng.next()`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index in `0..n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8)).flat_map(|_| self.next().to_le_bytes()).take(n).collect()
    }

    /// `lines` lines of log-like text: compressible, never repeating.
    pub fn text(&mut self, lines: usize) -> String {
        const W: [&str; 8] = ["alpha", "beta", "gamma", "delta", "request", "served", "in", "ms"];
        (0..lines)
            .map(|i| {
                let words: Vec<&str> = (0..8).map(|_| W[(self.next() % 8) as usize]).collect();
                format!("{i:08} {} {}\n", self.next() % 100_000, words.join(" "))
            })
            .collect()
    }
}

/// `n` random bytes from `seed` (made odd, so no seed gives zeros).
pub fn random(n: usize, seed: u64) -> Vec<u8> {
    Rng(seed | 1).bytes(n)
}

/// A path as `&str`, for command arguments.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Whether `tool --version` runs.
pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Runs a command to its end, stdin empty (a test never waits on a
/// prompt), and returns what it did, whatever its exit status.
pub fn output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// The stdout and stderr of a finished command, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs a command that must succeed; returns its stdout. Fails the test
/// with the command and its whole output otherwise.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = output(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?} failed ({}): {}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must succeed and print one JSON value.
pub fn json(cmd: &str, args: &[&str]) -> serde_json::Value {
    let out = run(cmd, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd} {args:?} printed no JSON ({e}): {out}"))
}

/// Runs a command; `Err` with its output when it fails, for set-up steps a
/// test may skip on (mounting, say).
pub fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd} {args:?}: {}", text(&out)))
    }
}

/// A child process, killed and reaped on drop (a failing test leaves no
/// server behind).
#[derive(Debug)]
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to 10 seconds for something to listen on a unix socket.
pub fn wait_for_socket(sock: &Path) {
    let t = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "nothing listens on {}", sock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Says that a test cannot run here and why. Outside CI that is a skip
/// (printed); with `VMB_REQUIRE_ALL` set, as `.ci/run` sets it, a missing
/// prerequisite fails the test instead: CI never passes by skipping.
///
/// A skipped test still counts as passed for cargo: `scripts/test` sets
/// `VMB_SKIP_LOG` to a file where each skip adds a line, and its closing
/// line counts them apart.
pub fn skip(test: &str, why: &str) {
    assert!(std::env::var_os("VMB_REQUIRE_ALL").is_none(), "{test} cannot run: {why} (VMB_REQUIRE_ALL is set)");
    eprintln!("SKIPPED {test}: {why}");
    if let Some(log) = std::env::var_os("VMB_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Bytes free (to root) on the file system holding `path`, as `stat -f`
/// counts them.
pub fn free_bytes(path: &Path) -> u64 {
    let out = run("stat", &["-f", "-c", "%f %S", s(path)]);
    let n: Vec<u64> = out.split_whitespace().map(|w| w.parse().expect("a number from stat -f")).collect();
    n[0] * n[1]
}

/// A loop mount of a file-system image, thawed (in case a test failed while
/// it was frozen) and unmounted on drop.
#[derive(Debug)]
pub struct LoopMount(pub std::path::PathBuf);

impl LoopMount {
    /// Mounts `image` at `at` (made if missing). Needs root.
    pub fn new(image: &Path, at: &Path) -> Result<LoopMount, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        sh("mount", &["-o", "loop", s(image), s(at)])?;
        Ok(LoopMount(at.to_path_buf()))
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = sh("fsfreeze", &["-u", s(&self.0)]);
        if sh("umount", &[s(&self.0)]).is_err() {
            let _ = sh("umount", &["-l", s(&self.0)]);
        }
    }
}

/// An XFS with reflinks of `size` bytes (at least 300 MiB, the smallest
/// mkfs.xfs makes; the image is sparse), loop-mounted at `dir/xfs`. Needs
/// root; `Err` says why it cannot be built.
pub fn reflink_xfs(dir: &Path, size: u64) -> Result<LoopMount, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Err("not running as root (loop mounts need it)".into());
    }
    let xfs_img = dir.join("xfs.img");
    std::fs::File::create(&xfs_img).and_then(|f| f.set_len(size.max(300 << 20))).map_err(|e| e.to_string())?;
    sh("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", s(&xfs_img)])?;
    LoopMount::new(&xfs_img, &dir.join("xfs"))
}

/// A guest's ext4 disk image on an XFS with reflinks, both loop-mounted
/// under `dir`: the XFS at `dir/xfs`, the image at `dir/xfs/root.img`
/// (`size` bytes, sparse), the guest's file system at `dir/guest`. Needs
/// root; `Err` says why it cannot be built.
pub fn guest_on_xfs(dir: &Path, size: u64) -> Result<(LoopMount, LoopMount, std::path::PathBuf), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Err("not running as root (loop mounts and FIFREEZE need it)".into());
    }
    let xfs = reflink_xfs(dir, size * 2)?;
    let image = xfs.0.join("root.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(size)).map_err(|e| e.to_string())?;
    sh("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", s(&image)])?;
    let guest = LoopMount::new(&image, &dir.join("guest"))?;
    Ok((guest, xfs, image))
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// Writes and syncs a file `name` in `dir` within `limit` (a frozen file
/// system makes the write hang), or says how long it hung. A write that
/// hangs goes on in a thread of its own and ends at the thaw.
pub fn write_within(dir: &Path, name: &str, limit: Duration) -> Result<Duration, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.join(name);
    let started = Instant::now();
    std::thread::spawn(move || {
        let r = std::fs::File::create(&path).and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"still writable\n")?;
            f.sync_all()
        });
        let _ = tx.send(r.map(|_| started.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the write hung for more than {limit:?}")),
    }
}

/// Runs `testkit/guest-disk.sh STAGE DIR` (`create` or `change`): a guest
/// disk with GPT, FAT, ext4, XFS and LVM at `DIR/disk.img`, and the trees
/// it holds at `DIR/expect-N/VOLUME` (see the script). Needs root.
pub fn guest_disk(stage: &str, dir: &Path) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-disk.sh");
    sh(s(&script), &[stage, s(dir)]).map(drop)
}

/// What is missing here for [`guest_disk`], if anything.
pub fn guest_disk_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Some("not running as root (loop mounts need it)".into());
    }
    let missing: Vec<_> = ["sfdisk", "mkfs.ext4", "mkfs.xfs", "mkfs.vfat", "mcopy", "pvcreate", "losetup"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    (!missing.is_empty()).then(|| format!("missing {} (scripts/setup.sh installs them)", missing.join(", ")))
}

/// Compares two trees as `vmbackup files extract` must copy them: the same
/// names, kinds, contents, link targets, modes, owners and modification
/// times (of folders too, when `folder_times`). Returns the first
/// difference.
pub fn same_tree(expected: &Path, actual: &Path, folder_times: bool) -> Result<usize, String> {
    use std::os::unix::fs::MetadataExt;
    let (e, a) = (
        std::fs::symlink_metadata(expected).map_err(|x| format!("{}: {x}", expected.display()))?,
        std::fs::symlink_metadata(actual).map_err(|x| format!("{}: {x}", actual.display()))?,
    );
    let what = |field: &str, x: String, y: String| format!("{}: {field} {x}, expected {y}", actual.display());
    if e.file_type() != a.file_type() {
        return Err(what("type", format!("{:?}", a.file_type()), format!("{:?}", e.file_type())));
    }
    if !e.file_type().is_symlink() && (e.mode() & 0o7777) != (a.mode() & 0o7777) {
        return Err(what("mode", format!("{:o}", a.mode() & 0o7777), format!("{:o}", e.mode() & 0o7777)));
    }
    if (e.uid(), e.gid()) != (a.uid(), a.gid()) {
        return Err(what("owner", format!("{}:{}", a.uid(), a.gid()), format!("{}:{}", e.uid(), e.gid())));
    }
    if (!e.is_dir() || folder_times) && (e.mtime(), e.mtime_nsec()) != (a.mtime(), a.mtime_nsec()) {
        return Err(what(
            "mtime",
            format!("{}.{:09}", a.mtime(), a.mtime_nsec()),
            format!("{}.{:09}", e.mtime(), e.mtime_nsec()),
        ));
    }
    if e.file_type().is_symlink() {
        let (x, y) = (std::fs::read_link(expected), std::fs::read_link(actual));
        if x.as_ref().ok() != y.as_ref().ok() {
            return Err(what("target", format!("{y:?}"), format!("{x:?}")));
        }
        return Ok(1);
    }
    if e.is_file() {
        if std::fs::read(expected).ok() != std::fs::read(actual).ok() {
            return Err(format!("{}: content differs from {}", actual.display(), expected.display()));
        }
        return Ok(1);
    }
    let names = |p: &Path| -> Result<Vec<std::ffi::OsString>, String> {
        let mut n: Vec<_> = std::fs::read_dir(p)
            .map_err(|x| format!("{}: {x}", p.display()))?
            .map(|d| d.map(|d| d.file_name()).map_err(|x| x.to_string()))
            .collect::<Result<_, _>>()?;
        n.sort();
        Ok(n)
    };
    let (en, an) = (names(expected)?, names(actual)?);
    if en != an {
        return Err(what("entries", format!("{an:?}"), format!("{en:?}")));
    }
    let mut count = 1;
    for n in en {
        count += same_tree(&expected.join(&n), &actual.join(&n), folder_times)?;
    }
    Ok(count)
}
