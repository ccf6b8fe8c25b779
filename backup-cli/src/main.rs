//! `vmbackup`: the command line of the vmbackup engine.
//!
//! Exit codes: 0 success, 1 the operation failed (or verify found damage),
//! 2 bad usage.

mod copy;
mod demo;
mod disk;
mod files;
mod globals;
mod jobs;
mod keys;
mod maintenance;
mod mount;
mod nbd;
mod output;
mod progress;
mod protection;
mod recovery;
mod repair;
mod schedule;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backup_core::{
    BackupOptions, Consistency, ConsistentProvider, ImageFileProvider, PointManifest, RestoreOptions, ScriptsConfig,
    VerifyOptions, Vm, VmDisk,
};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::globals::Globals;
use crate::output::outln;

/// Back up virtual machine disks: only changed blocks, into a deduplicating vault.
#[derive(Parser)]
#[command(name = "vmbackup", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    vault_options: globals::VaultArgs,
    #[command(flatten)]
    key: keys::KeyArgs,
}

// Parsed once per run: the size of the backup variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create a new, empty vault.
    Init {
        /// The vault's folder (must not exist, or be empty), or a URL:
        /// az://CONTAINER/PREFIX or s3://BUCKET/PREFIX.
        vault: PathBuf,
        /// Encrypt the vault: every chunk, index segment and manifest is
        /// sealed (AES-256-GCM) with a key that the passphrase
        /// ($VMBACKUP_PASSPHRASE, --passphrase-file, or a prompt) or
        /// --key-file unlocks.
        #[arg(long)]
        encrypt: bool,
    },
    /// Manage the passphrases and key files of an encrypted vault.
    Key {
        #[command(subcommand)]
        command: keys::KeyCommand,
    },
    /// Back up a VM whose disks are raw image files or NBD exports.
    Backup {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The VM's name (with --libvirt, default: the domain's).
        #[arg(long, required_unless_present = "libvirt")]
        vm: Option<String>,
        /// Back up this libvirt domain: its disks come from its XML; while it
        /// runs, each snapshot is a checkpoint and a pull-mode backup job
        /// (incremental from the previous point's checkpoint), quiesced
        /// through its guest agent; shut off, its disks are read in place.
        #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["disks", "qmp", "scripts", "freeze"])]
        libvirt: Option<String>,
        /// The libvirt connection URI (default qemu:///system).
        #[arg(long, value_name = "URI", requires = "libvirt")]
        connect: Option<String>,
        /// With --libvirt: back up only these disks (target names: vda,vdb).
        #[arg(long, value_delimiter = ',', value_name = "DISKS", requires = "libvirt")]
        include: Vec<String>,
        /// With --libvirt: never back up these disks (target names).
        #[arg(long, value_delimiter = ',', value_name = "DISKS", requires = "libvirt")]
        exclude: Vec<String>,
        /// With --libvirt: a VMSnapshotScriptPluginConfig.json on this host
        /// whose pre/post scripts are installed into the guest through its
        /// agent (on the first backup, and whenever they change) and run
        /// there for app consistency. Linux guests.
        #[arg(long, value_name = "CONFIG", requires = "libvirt")]
        guest_scripts: Option<PathBuf>,
        /// A disk image, as PATH or NAME=PATH, or an NBD export as a URI
        /// (nbd+unix:///EXPORT?socket=PATH, nbd://HOST:PORT/EXPORT; read as
        /// the server exports it, nothing frozen); repeat for each disk.
        #[arg(long = "disk", required_unless_present = "libvirt")]
        disks: Vec<String>,
        /// Block size of a disk's first point: 16K to 4M, a power of two.
        #[arg(long, default_value = "64K", value_parser = parse_size)]
        block_size: u32,
        /// The consistency to ask for: app, fs or crash (default: app with
        /// --scripts or --libvirt, fs with --freeze, crash otherwise).
        #[arg(long)]
        consistency: Option<String>,
        /// A VMSnapshotScriptPluginConfig.json whose pre/post scripts run
        /// around the snapshot (for app consistency). It and its scripts must
        /// be owned by you and not writable by group or others.
        #[arg(long, value_name = "CONFIG")]
        scripts: Option<PathBuf>,
        /// The guest's file systems, mounted on this host, to freeze around
        /// the snapshot (for fs or app consistency); thawed in reverse order.
        #[arg(long = "freeze", value_name = "MOUNT", num_args = 1..)]
        freeze: Vec<PathBuf>,
        /// Seconds a freeze may last before the watchdog thaws it (the point
        /// is then not file-system-consistent).
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        freeze_timeout: f64,
        /// The weakest consistency to accept: a fallback below it fails the
        /// backup instead (app, fs or crash).
        #[arg(long, default_value = "crash")]
        min_consistency: String,
        /// Use this dirty bitmap of the NBD disks as change tracking (the
        /// server must export it as qemu:dirty-bitmap:NAME, e.g. qemu-nbd -B
        /// NAME). The bitmap must record since before the previous point's
        /// snapshot; a sample of clean blocks is audited.
        #[arg(long, value_name = "NAME")]
        bitmap: Option<String>,
        /// Take a live point-in-time snapshot through this QMP socket of a
        /// QEMU or qemu-storage-daemon; each --disk is then NAME=NODE, a
        /// block node name (qcow2, for the persistent checkpoint bitmaps
        /// that track changes). Fleecing images go to the temporary folder.
        #[arg(long, value_name = "SOCKET", conflicts_with = "bitmap")]
        qmp: Option<PathBuf>,
        /// The unix socket of QEMU's NBD server (started there when none
        /// runs; default: the QMP socket's path with ".nbd" added).
        #[arg(long, value_name = "PATH", requires = "qmp")]
        qmp_nbd_socket: Option<PathBuf>,
        /// The host end of the guest's qemu-guest-agent channel: with
        /// --consistency fs, the guest's file systems are frozen for the
        /// instant of the snapshot.
        #[arg(long, value_name = "SOCKET", requires = "qmp")]
        guest_agent: Option<PathBuf>,
        /// Keep the snapshot for this many days (1 to 30) after the backup,
        /// for instant restore: the point is then restorable from the
        /// snapshot tier (images on a file system with reflinks only).
        #[arg(long, value_name = "DAYS", default_value_t = 0)]
        instant_restore_days: u32,
        /// Try a snapshot step that fails with a transient error this many
        /// more times, waiting 1, 2, 4, ... seconds.
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// The share (0 to 1) of blocks that change tracking calls clean to
        /// re-read and compare, auditing the tracking.
        #[arg(long, value_name = "FRACTION", default_value_t = 0.01)]
        audit_rate: f64,
        /// Read a block this many more times when the disk fails to read it.
        #[arg(long, default_value_t = 2)]
        read_retries: u32,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Mount the vault's points read-only (FUSE) as `VM/POINT/DISK.img`
    /// until Ctrl-C or SIGTERM. Reads come from the vault as they are
    /// made, checked; root can loop-mount an image (`mount -o ro,loop`).
    /// The vault's shared lock is held meanwhile.
    Mount {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// An empty folder to mount on.
        mountpoint: PathBuf,
        /// Only this VM's points.
        #[arg(long)]
        vm: Option<String>,
        /// Only this point of the VM: an id, a unique prefix of one, or `latest`.
        #[arg(long, requires = "vm")]
        point: Option<String>,
    },
    /// Guest files inside a point, read-only, without restoring a disk:
    /// list volumes and folders, print a file, extract files with their
    /// modes, times and owners, and find which points hold a file. ext4
    /// and XFS need root (the kernel reads them, read-only); FAT does not.
    Files {
        #[command(subcommand)]
        action: files::FilesAction,
    },
    /// Serve a disk of a point read-only over NBD (qemu-img, qemu-nbd,
    /// nbd-client read it; mount it to copy files out) until Ctrl-C. Prints
    /// the NBD URI on stdout. The vault's shared lock is held meanwhile.
    Export {
        #[command(flatten)]
        of: disk::DiskOfPoint,
        /// Listen on this unix socket (created; it must not exist).
        #[arg(long, value_name = "PATH", conflicts_with = "listen", required_unless_present = "listen")]
        socket: Option<PathBuf>,
        /// Listen on this TCP address (loopback unless --allow-remote).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// Allow a --listen address that is not loopback: the export has no
        /// authentication and no encryption.
        #[arg(long)]
        allow_remote: bool,
    },
    /// Write a disk of a point (or a byte range of it) on stdout, read
    /// from the vault without restoring it; every block is checked as it is
    /// read. The vault's shared lock is held meanwhile.
    Cat {
        #[command(flatten)]
        of: disk::DiskOfPoint,
        /// Where to start, in bytes (512, 64K, 1M, 2G).
        #[arg(long, default_value = "0", value_parser = parse_size_u64)]
        offset: u64,
        /// How many bytes (default: to the end of the disk).
        #[arg(long, value_parser = parse_size_u64)]
        length: Option<u64>,
    },
    /// List recovery points.
    List {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Only this VM's points.
        #[arg(long)]
        vm: Option<String>,
        /// List the soft-deleted points instead, and until when each can
        /// be undeleted.
        #[arg(long)]
        deleted: bool,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Restore a disk to a file, or every disk of a point to a folder.
    Restore {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The VM.
        #[arg(long)]
        vm: String,
        /// The point: an id, a unique prefix of one, or `latest`.
        #[arg(long, default_value = "latest")]
        point: String,
        /// The disk, by name or index; without it every disk is restored
        /// into the folder --to.
        #[arg(long)]
        disk: Option<String>,
        /// The file (with --disk) or folder (without) to write.
        #[arg(long, required_unless_present = "to_libvirt", conflicts_with = "to_libvirt")]
        to: Option<PathBuf>,
        /// Write zeros where the stored data is damaged and list those byte
        /// ranges, instead of failing (exit code 1 when any).
        #[arg(long)]
        allow_damaged: bool,
        #[command(flatten)]
        domain: DomainFlags,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Start a point as a new libvirt domain within seconds: its disks are
    /// qcow2 overlays over this process's NBD export of the point, and
    /// libvirt's block pull moves the data into them while the guest runs.
    /// Returns when the domain stands on local disks only. Ctrl-C discards
    /// the recovery; a killed run leaves the guest paused, and running the
    /// same command again resumes it.
    InstantRestore {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The VM.
        #[arg(long)]
        vm: String,
        /// The point: an id, a unique prefix of one, or `latest`.
        #[arg(long, default_value = "latest")]
        point: String,
        #[command(flatten)]
        domain: DomainFlags,
        /// At most this many MiB per second per disk for the move (default:
        /// as fast as it goes).
        #[arg(long, value_name = "MIB_PER_S", default_value_t = 0)]
        bandwidth: u64,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the chunk index files from the packs, then say what is lost:
    /// the points' byte ranges that cannot be restored (exit code 1 then).
    Repair {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Only say what would be rebuilt; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-read and check every chunk of a point, a VM, or the whole vault.
    Verify {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Only this VM's points.
        #[arg(long)]
        vm: Option<String>,
        /// Only this point (needs --vm).
        #[arg(long, requires = "vm")]
        point: Option<String>,
        /// Boot the point (the newest without --point) in a throwaway
        /// libvirt domain with no network, on discarded overlays, and judge
        /// it by its guest agent; the verdict, the console's end and a
        /// screenshot are kept beside the point (exit code 1 when it fails).
        #[arg(long, requires = "vm")]
        boot: bool,
        /// With --boot: a script copied into the guest and run there through
        /// the agent; exit status 0 passes.
        #[arg(long, requires = "boot", value_name = "IN_GUEST_TEST")]
        script: Option<PathBuf>,
        /// With --boot: seconds the guest's agent (and then the test) has.
        #[arg(long, requires = "boot", default_value_t = 300)]
        timeout: u64,
        /// With --boot: the libvirt connection.
        #[arg(long, requires = "boot", value_name = "URI", default_value = "qemu:///system")]
        connect: String,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The whole job on a sample VM: back up, change, back up, restore, verify.
    Demo {
        /// Where to put the sample VM, vault and restores (a new temporary
        /// folder when not given).
        dir: Option<PathBuf>,
        /// Then the live part: boot the guest built by scripts/test-guest.sh
        /// in this folder under libvirt, back it up twice while it writes,
        /// application-consistent, and restore and check both points.
        #[arg(long, value_name = "GUEST_DIR")]
        live_guest: Option<PathBuf>,
        /// The libvirt connection of the live part.
        #[arg(long, value_name = "URI", default_value = "qemu:///system", requires = "live_guest")]
        connect: String,
    },
    /// Remove recovery points by a policy's retention (the newest point of
    /// each VM is always kept); then run `gc` to reclaim their space.
    Prune {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The policy file (TOML) whose retention rules apply.
        #[arg(long)]
        policy: PathBuf,
        /// Only this VM's points.
        #[arg(long)]
        vm: Option<String>,
        /// Show what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Copy points into another vault (a second site): only the chunks it
    /// lacks move, resealed with its key; a point it already holds is
    /// skipped, so a rerun finishes a copy that was stopped. The global key
    /// and store options (--key-file, --passphrase-file, $VMBACKUP_PASSPHRASE,
    /// --endpoint, --cache) are --to's; --from has its own.
    Copy {
        /// The vault copied from (a folder or a URL).
        #[arg(long)]
        from: PathBuf,
        /// The vault copied into (a folder or a URL).
        #[arg(long)]
        to: PathBuf,
        /// Only this VM's points; repeat for more (default: every VM).
        #[arg(long = "vm", value_name = "NAME")]
        vms: Vec<String>,
        /// Which points of each VM: latest, all, or since=TIME (RFC 3339).
        #[arg(long, default_value = "latest")]
        points: String,
        /// Unlock --from with this key file.
        #[arg(long, value_name = "FILE", conflicts_with = "from_passphrase_file")]
        from_key_file: Option<PathBuf>,
        /// Unlock --from with the passphrase in this file (its first line);
        /// else $VMBACKUP_FROM_PASSPHRASE, else a prompt.
        #[arg(long, value_name = "FILE")]
        from_passphrase_file: Option<PathBuf>,
        /// The endpoint of --from's object store.
        #[arg(long, value_name = "URL")]
        from_endpoint: Option<String>,
        /// The cache folder of --from on object storage (default: one
        /// under the user's cache folder, named by its URL).
        #[arg(long, value_name = "DIR")]
        from_cache: Option<PathBuf>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete a point. While the vault's soft delete is on (14 days unless
    /// `vmbackup config` says otherwise) it stays recoverable by `vmbackup
    /// undelete` and gc keeps its data until its days are over.
    Delete {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The VM.
        #[arg(long)]
        vm: String,
        /// The point: an id, a unique prefix of one, or `latest`.
        #[arg(long)]
        point: String,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Bring back a soft-deleted point (`list --deleted` shows them).
    Undelete {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The VM.
        #[arg(long)]
        vm: String,
        /// The point: an id or a unique prefix of one.
        #[arg(long)]
        point: String,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show the vault's settings, or change them: they live in the vault
    /// and apply to every host and caller.
    Config {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Keep points removed by prune or delete recoverable for this many
        /// days (0 removes them at once).
        #[arg(long, value_name = "DAYS")]
        soft_delete_days: Option<u32>,
        /// Make soft delete always on: it can then never be turned off, its
        /// days never shortened, and this never undone.
        #[arg(long)]
        soft_delete_always_on: bool,
        /// Make points younger than this many days immutable: delete
        /// refuses them, prune spares them, gc neither removes nor rewrites
        /// what was written in that time. The days can only grow. On S3
        /// each object written is also locked for that long (Object Lock,
        /// compliance mode), so the bucket must have Object Lock.
        #[arg(long, value_name = "DAYS")]
        immutable_days: Option<u32>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove what no point references: segments, dead packs, and the dead
    /// part of mostly-dead packs (repacked). Soft-deleted points whose days
    /// are over go for good first.
    Gc {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Leave alone anything modified in the last MINUTES.
        #[arg(long, default_value_t = 60, value_name = "MINUTES")]
        grace: u64,
        /// Rewrite a pack once this share (0 to 1) of its chunk bytes is
        /// dead: 0 rewrites every pack with a dead chunk, 1 none (wholly
        /// dead packs are removed either way).
        #[arg(long, default_value_t = 0.5, value_name = "SHARE")]
        repack_threshold: f64,
        /// Show what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Pretend that now is this instant (RFC 3339) when judging whether
        /// soft-deleted points' days are over.
        #[arg(long, hide = true)]
        now: Option<jiff::Timestamp>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// The history of backup jobs: phases with durations, result, point, error.
    Jobs {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Only this VM's jobs.
        #[arg(long)]
        vm: Option<String>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Release snapshots kept for instant restore whose days are over (and
    /// those of jobs that committed nothing, or of pruned points).
    ReleaseExpired {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Only this VM's snapshots.
        #[arg(long)]
        vm: Option<String>,
        /// Pretend that now is this instant (RFC 3339).
        #[arg(long, hide = true)]
        now: Option<jiff::Timestamp>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run in the foreground, backing up VMs when the policy says (stop
    /// with SIGTERM or Ctrl-C: running jobs are cancelled, nothing half-made).
    Schedule {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The policy file (TOML): schedule, time zone and retention.
        #[arg(long)]
        policy: PathBuf,
        /// The VMs, as JSON: {"vms": [{"name": "web", "disks": ["root=/images/web.img"]}]}.
        #[arg(long)]
        vms: PathBuf,
        /// How many VMs are backed up at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Limit the disk reads of all jobs together, in bytes per second (64M, 512K, ...).
        #[arg(long, value_parser = parse_size)]
        limit: Option<u32>,
        /// Limit the disk reads of all jobs together to this many at once.
        #[arg(long)]
        max_reads: Option<usize>,
        /// Run what is due now (one catch-up run per VM), then exit.
        #[arg(long)]
        once: bool,
        /// Pretend that now is this instant (RFC 3339): a fake clock for rehearsals and tests.
        #[arg(long, hide = true)]
        now: Option<jiff::Timestamp>,
    },
}

/// What `vmbackup policy` does.
#[derive(Subcommand)]
enum PolicyAction {
    /// Check a policy file; print its rules and its next runs.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        /// How many next runs to print.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Parses sizes like 65536, 64K, 64KiB, 1M.
fn parse_size(s: &str) -> Result<u32, String> {
    u32::try_from(parse_size_u64(s)?).map_err(|_| format!("{s:?} is too large"))
}

/// A byte count: a number, or one with a K, M, G or T suffix (powers of
/// 1024; `KiB` and `KB` mean the same).
fn parse_size_u64(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix("IB").or_else(|| t.strip_suffix('B')).unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size like 65536, 64K or 1M"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmbackup: error: {}", error_text(&e));
            let usage = e
                .downcast_ref::<backup_core::Error>()
                .is_some_and(|e| matches!(e, backup_core::Error::InvalidArgument { .. }));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// An error and its causes on one line, each cause said once: the
/// engine's errors already end with the operating system's message, which
/// is also their source.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for part in e.chain().map(ToString::to_string) {
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn run(cli: Cli) -> Result<ExitCode> {
    let g = Globals::new(cli.vault_options, cli.key)?;
    let g = &g;
    match cli.command {
        Command::Init { vault, encrypt } => {
            let v = keys::init(&vault, encrypt, g)?;
            let how = if v.is_encrypted() { "encrypted vault" } else { "vault" };
            outln!("initialized {how} {} (id {})", v.location(), v.id());
        }
        Command::Key { command } => return keys::run(command, g),
        Command::Backup {
            vault,
            vm,
            libvirt,
            connect,
            include,
            exclude,
            guest_scripts,
            disks,
            block_size,
            consistency,
            scripts,
            freeze,
            freeze_timeout,
            min_consistency,
            bitmap,
            qmp,
            qmp_nbd_socket,
            guest_agent,
            instant_restore_days,
            retries,
            audit_rate,
            read_retries,
            json,
        } => {
            let vault = g.open(&vault)?;
            let mut options = BackupOptions::default();
            // SIGINT and SIGTERM take the cancel path: scripts killed and
            // the post-script run, file systems thawed, clones released.
            options.cancel = signals::cancel_on_signals();
            if !(freeze_timeout.is_finite() && freeze_timeout > 0.0 && freeze_timeout <= 3600.0) {
                bail!("--freeze-timeout {freeze_timeout} is not between 0 and 3600 seconds");
            }
            let min_consistency = min_consistency.parse::<Consistency>()?;
            let freeze_timeout = std::time::Duration::from_secs_f64(freeze_timeout);
            let is_libvirt = libvirt.is_some();
            let libvirt_provider = libvirt_provider(LibvirtArgs {
                domain: libvirt,
                connect,
                include,
                exclude,
                guest_scripts,
                min_consistency,
                freeze_timeout,
                cancel: options.cancel.clone(),
            })?;
            let vm = match (&libvirt_provider, vm) {
                (Some(lp), name) => lp.vm(name.as_deref())?,
                (None, Some(name)) => vm_from_args(&name, &disks)?,
                (None, None) => bail!("give --vm NAME (or --libvirt DOMAIN)"),
            };
            options.block_size = block_size;
            options.cbt_audit_rate = audit_rate;
            options.read_retries = read_retries;
            options.consistency = match consistency {
                Some(c) => c.parse::<Consistency>()?,
                None if scripts.is_some() || is_libvirt => Consistency::Application,
                None if !freeze.is_empty() => Consistency::FileSystem,
                None => Consistency::Crash,
            };
            let hooks = scripts.is_some() || !freeze.is_empty();
            let qemu_provider = nbd::qemu_provider(qmp, qmp_nbd_socket, guest_agent, hooks)?;
            let nbd_provider = nbd::provider(&vm.disks, bitmap, hooks)?;
            let mut provider = ConsistentProvider::new(ImageFileProvider::new())
                .with_freeze(freeze)
                .with_freeze_timeout(freeze_timeout)
                .with_min_consistency(min_consistency)
                .with_cancel(options.cancel.clone());
            if let Some(config) = &scripts {
                provider = provider.with_scripts(ScriptsConfig::load(config)?);
            }
            options.instant_restore_days = instant_restore_days;
            options.retries = retries;
            options.progress = progress::bar("backup");
            let provider: &dyn backup_core::SnapshotProvider = match (&libvirt_provider, &qemu_provider, &nbd_provider)
            {
                (Some(l), _, _) => l.as_provider(),
                (None, Some(q), _) => q,
                (None, None, Some(n)) => n,
                (None, None, None) => &provider,
            };
            let report = backup_core::backup(&vault, provider, &vm, &options)?;
            let p = &report.point;
            if json {
                let mut out = point_json(p);
                out["warnings"] = json!(report.warnings);
                out["prepared"] = json!(report.prepared);
                out["job"] = json!(report.job);
                out["tiers"] = json!(jobs::tiers(&vault, p));
                out["snapshot_kept_until"] = json!(report.snapshot_kept_until.map(|t| t.to_string()));
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                if let Some(prep) = &report.prepared {
                    eprintln!("prepared vm {} for its first backup here ({})", p.vm, prep.provider_version);
                    for c in &prep.changes {
                        eprintln!("  changed: {c}");
                    }
                }
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                print_point_summary(p);
                if let Some(until) = report.snapshot_kept_until {
                    outln!("  snapshot kept for instant restore until {until} (tiers: snapshot, vault)");
                }
            }
        }
        Command::List { vault, vm, deleted: true, json } => {
            return protection::list_deleted(g, &vault, vm.as_deref(), json);
        }
        Command::List { vault, vm, deleted: false, json } => {
            let vault = g.open(&vault)?;
            let (points, bad) = vault.scan_points(vm.as_deref())?;
            for e in &bad {
                eprintln!("warning: {e}");
            }
            // Points whose job still transfers: restorable from their kept
            // snapshot, not committed yet.
            let in_flight =
                backup_core::snapshot_only_points(&vault, vm.as_deref()).map(|(k, _)| k).unwrap_or_default();
            if let Some(vm) = &vm
                && points.is_empty()
                && bad.is_empty()
                && in_flight.is_empty()
            {
                // A typo in a VM's name must not look like a VM without points.
                return Err(backup_core::Error::NotFound { what: format!("points of vm {vm}") }.into());
            }
            // What booting each point showed (`verify --boot`).
            let mut verdicts = std::collections::BTreeMap::new();
            for p in &points {
                if !verdicts.contains_key(&p.vm) {
                    let v = vault.boot_verdicts(&p.vm).unwrap_or_else(|e| {
                        eprintln!("warning: boot verdicts of vm {}: {e}", p.vm);
                        Default::default()
                    });
                    verdicts.insert(p.vm.clone(), v);
                }
            }
            let verdict = |p: &PointManifest| verdicts.get(&p.vm).and_then(|v| v.get(&p.id));
            if json {
                let records: Vec<_> = points
                    .iter()
                    .map(|p| {
                        let mut o = point_json(p);
                        o["tiers"] = json!(jobs::tiers(&vault, p));
                        o["prepare"] = json!(vault.vm_record(&p.vm).ok().flatten());
                        o["boot"] = match verdict(p) {
                            Some(v) => json!({
                                "passed": v.passed, "reason": v.reason, "checked_at": v.checked_at,
                                "agent_seconds": v.agent_seconds, "script_exit": v.script_exit,
                            }),
                            None => serde_json::Value::Null,
                        };
                        o
                    })
                    .collect();
                let in_flight: Vec<_> = in_flight
                    .iter()
                    .map(|k| {
                        let disks: Vec<_> = k.disks.iter().map(|d| json!({ "name": d.name, "size": d.size })).collect();
                        json!({
                            "id": k.point, "vm": k.vm, "time": k.taken.to_string(), "job": k.job,
                            "tiers": ["snapshot"], "committed": false,
                            "snapshot_kept_until": k.expires.to_string(), "disks": disks,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&json!({ "points": records, "in_flight": in_flight }))?);
            } else {
                outln!(
                    "{:<24} {:<16} {:<25} {:<28} {:>5} {:>12} {:>12}  TIERS           BOOT",
                    "POINT",
                    "VM",
                    "TIME",
                    "CONSISTENCY",
                    "DISKS",
                    "SIZE",
                    "ADDED"
                );
                for p in &points {
                    // The level achieved, and the one asked for when the
                    // snapshot fell back.
                    let consistency = if p.consistency == p.wanted_consistency {
                        p.consistency.to_string()
                    } else {
                        format!("{} (asked {})", p.consistency, p.wanted_consistency)
                    };
                    outln!(
                        "{:<24} {:<16} {:<25} {:<28} {:>5} {:>12} {:>12}  {:<15} {}",
                        p.id,
                        p.vm,
                        p.time.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        consistency,
                        p.disks.len(),
                        human(p.disks.iter().map(|d| u128::from(d.size)).sum::<u128>()),
                        human(p.stats.bytes_added),
                        jobs::tiers(&vault, p).iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
                        verdict(p).map_or_else(|| "-".to_string(), |v| v.summary())
                    );
                }
                for k in &in_flight {
                    outln!(
                        "{:<24} {:<16} {:<25} {:<28} {:>5} {:>12} {:>12}  snapshot",
                        k.point,
                        k.vm,
                        k.taken.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        format!("(job {} transferring)", k.job),
                        k.disks.len(),
                        human(k.disks.iter().map(|d| u128::from(d.size)).sum::<u128>()),
                        "-",
                    );
                }
                // What the first backup's prepare did to each VM listed.
                let mut vms: Vec<&str> = points.iter().map(|p| p.vm.as_str()).collect();
                vms.sort_unstable();
                vms.dedup();
                for name in vms {
                    if let Ok(Some(r)) = vault.vm_record(name) {
                        let by = if r.prepare.provider_version.is_empty() { "?" } else { &r.prepare.provider_version };
                        let changes = if r.prepare.changes.is_empty() {
                            "nothing changed".to_string()
                        } else {
                            r.prepare.changes.join("; ")
                        };
                        outln!(
                            "vm {name}: prepared by {by} at {} ({} time(s)): {changes}",
                            r.prepared_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                            r.times_prepared
                        );
                    }
                }
            }
        }
        Command::Repair { vault, dry_run, json } => return repair::run(g, &vault, dry_run, json),
        Command::Restore { vault, vm, point, disk, to, allow_damaged, domain, json } => {
            if let Some(args) = domain.args() {
                if disk.is_some() || allow_damaged {
                    bail!("--to-libvirt restores every disk, and never with damaged data");
                }
                return recovery::restore_as_domain(g, &vault, &vm, &point, &args, json);
            }
            let Some(to) = to else { bail!("--to or --to-libvirt is needed") };
            release_freed_buffers();
            let vault = g.open(&vault)?;
            let mut options = RestoreOptions::default();
            options.allow_damaged = allow_damaged;
            // A signal removes the partly written file instead of leaving it.
            options.cancel = signals::cancel_on_signals();
            // `--disk D --to DIR/` writes DIR/D, as cp does.
            let to = match &disk {
                Some(d) if to.is_dir() => to.join(d),
                _ => to,
            };
            let (point_id, stats, tier) = match vault.find_point(&vm, &point) {
                Ok(point) => {
                    options.progress = progress::bar("restore");
                    let stats = match &disk {
                        Some(d) => vec![jobs::restore_disk(&vault, &point, d, &to, &options)?],
                        None => jobs::restore_vm(&vault, &point, &to, &options)?,
                    };
                    (point.id, stats, None)
                }
                // A point whose job still transfers has no manifest yet, but
                // its kept snapshot restores it.
                Err(e @ backup_core::Error::NotFound { .. }) => {
                    match jobs::restore_in_flight(&vault, &vm, &point, disk.as_deref(), &to, &options)? {
                        Some((id, stats)) => (id, stats, Some("snapshot")),
                        None => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                let mut out = json!({ "point": point_id, "vm": vm, "disks": stats });
                if let Some(t) = tier {
                    out["tier"] = json!(t);
                }
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for s in &stats {
                    eprintln!(
                        "restored disk {} of point {} ({}, {} of data) in {:.2} s",
                        s.disk,
                        point_id,
                        human(s.size),
                        human(s.bytes_written),
                        s.seconds
                    );
                    for d in &s.damaged {
                        eprintln!(
                            "DAMAGED disk {} bytes {}..{} written as zeros: {}",
                            s.disk, d.range.start, d.range.end, d.detail
                        );
                    }
                }
            }
            if stats.iter().any(|s| !s.damaged.is_empty()) {
                return Ok(ExitCode::from(1));
            }
        }
        Command::InstantRestore { vault, vm, point, domain, bandwidth, json } => {
            let Some(args) = domain.args() else { bail!("--to-libvirt NAME is needed") };
            return recovery::instant(g, &vault, &vm, &point, &args, bandwidth, json);
        }
        Command::Verify { vault, vm, point, boot, script, timeout, connect, json } => {
            if boot {
                let vm = vm.as_deref().unwrap_or_default();
                let point = point.as_deref().unwrap_or("latest");
                let args = recovery::BootArgs { script: script.as_deref(), timeout_secs: timeout, connect: &connect };
                return recovery::boot_verify(g, &vault, vm, point, &args, json);
            }
            let vault = g.open(&vault)?;
            let mut options = VerifyOptions::default();
            options.cancel = signals::cancel_on_signals();
            options.vm = vm;
            options.point = point;
            options.progress = progress::bar("verify");
            let report = backup_core::verify(&vault, &options)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&json!({ "ok": report.ok(), "report": report }))?);
            } else {
                for p in &report.problems {
                    outln!("BAD {p}");
                }
                outln!(
                    "{}: {} points, {} chunks, {} packs checked, {} problems",
                    if report.ok() { "ok" } else { "DAMAGED" },
                    report.points,
                    report.chunks,
                    report.packs,
                    report.problems.len()
                );
            }
            if !report.ok() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Cat { of, offset, length } => {
            return disk::cat(g, disk::CatArgs { of, offset, length });
        }
        Command::Files { action } => return files::run(g, action),
        Command::Mount { vault, mountpoint, vm, point } => {
            return mount::mount(g, mount::MountArgs { vault, mountpoint, vm, point });
        }
        Command::Export { of, socket, listen, allow_remote } => {
            return nbd::export(g, nbd::ExportArgs { of, socket, listen, allow_remote });
        }
        Command::Demo { dir, live_guest, connect } => demo::run(dir, live_guest.map(|g| (g, connect)))?,
        Command::Prune { vault, policy, vm, dry_run, json } => {
            return maintenance::prune(g, &vault, &policy, vm, dry_run, json);
        }
        Command::Gc { vault, grace, repack_threshold, dry_run, now, json } => {
            return maintenance::gc(g, &vault, maintenance::GcArgs { grace, repack_threshold, dry_run, now }, json);
        }
        Command::Copy {
            from,
            to,
            vms,
            points,
            from_key_file,
            from_passphrase_file,
            from_endpoint,
            from_cache,
            json,
        } => {
            let args = copy::Args {
                from: &from,
                to: &to,
                vms,
                points: &points,
                from_key_file,
                from_passphrase_file,
                from_endpoint,
                from_cache,
            };
            return copy::run(g, args, json);
        }
        Command::Delete { vault, vm, point, json } => return protection::delete(g, &vault, &vm, &point, json),
        Command::Undelete { vault, vm, point, json } => return protection::undelete(g, &vault, &vm, &point, json),
        Command::Config { vault, soft_delete_days, soft_delete_always_on, immutable_days, json } => {
            let mut change = backup_core::SettingsChange::default();
            change.soft_delete_days = soft_delete_days;
            change.soft_delete_always_on = soft_delete_always_on;
            change.immutable_days = immutable_days;
            return protection::config(g, &vault, &change, json);
        }
        Command::Policy { action: PolicyAction::Check { file, runs, json } } => {
            return maintenance::policy_check(&file, runs, json);
        }
        Command::Jobs { vault, vm, json } => return jobs::jobs(g, &vault, vm.as_deref(), json),
        Command::ReleaseExpired { vault, vm, now, json } => {
            return jobs::release_expired(g, &vault, vm.as_deref(), now, json);
        }
        Command::Schedule { vault, policy, vms, concurrency, limit, max_reads, once, now } => {
            return schedule::run(
                g,
                schedule::Args {
                    vault: &vault,
                    policy: &policy,
                    vms: &vms,
                    concurrency,
                    limit: limit.map(u64::from),
                    max_reads,
                    once,
                    now,
                },
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `backup --libvirt` was given.
#[cfg_attr(not(feature = "libvirt"), allow(dead_code))]
pub(crate) struct LibvirtArgs {
    pub(crate) domain: Option<String>,
    pub(crate) connect: Option<String>,
    pub(crate) include: Vec<String>,
    pub(crate) exclude: Vec<String>,
    pub(crate) guest_scripts: Option<PathBuf>,
    pub(crate) min_consistency: Consistency,
    pub(crate) freeze_timeout: std::time::Duration,
    pub(crate) cancel: backup_core::CancelToken,
}

/// Where a restore as a libvirt domain goes (`restore`, `instant-restore`).
#[derive(clap::Args, Debug)]
struct DomainFlags {
    /// Restore as a new libvirt domain of this name, defined from the
    /// point's saved domain XML with a new UUID, new MAC addresses and the
    /// restored disks (every disk, in parallel). The domain the point was
    /// taken from is never touched.
    #[arg(long, value_name = "NAME")]
    to_libvirt: Option<String>,
    /// With --to-libvirt: the folder the disks go to, as NAME-DISK.FORMAT.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/libvirt/images", requires = "to_libvirt")]
    pool: PathBuf,
    /// With --to-libvirt: qcow2 or raw (an instant restore's disks are
    /// always qcow2).
    #[arg(long, default_value = "qcow2", requires = "to_libvirt")]
    format: String,
    /// With --to-libvirt: start the domain (an instant restore always does).
    #[arg(long, requires = "to_libvirt")]
    start: bool,
    /// With --to-libvirt: replace a domain of that name and its files.
    #[arg(long, requires = "to_libvirt")]
    replace: bool,
    /// With --to-libvirt: the libvirt connection.
    #[arg(long = "connect", value_name = "URI", default_value = "qemu:///system", requires = "to_libvirt")]
    connect: String,
}

impl DomainFlags {
    fn args(&self) -> Option<recovery::DomainArgs> {
        Some(recovery::DomainArgs {
            name: self.to_libvirt.clone()?,
            connect: self.connect.clone(),
            pool: self.pool.clone(),
            format: self.format.clone(),
            replace: self.replace,
            start: self.start,
        })
    }
}

/// The libvirt provider a `backup --libvirt DOMAIN` (or a `schedule` VMs
/// file entry) asks for; None without a domain.
#[cfg(feature = "libvirt")]
pub(crate) fn libvirt_provider(a: LibvirtArgs) -> Result<Option<LibvirtVm>> {
    let Some(domain) = a.domain else { return Ok(None) };
    let mut p = backup_core::LibvirtProvider::new(domain);
    if let Some(uri) = a.connect {
        p.uri = uri;
    }
    p.include = a.include;
    p.exclude = a.exclude;
    p.guest_scripts = a.guest_scripts;
    p.min_consistency = a.min_consistency;
    p.freeze_timeout = a.freeze_timeout;
    p.cancel = a.cancel;
    Ok(Some(LibvirtVm(p)))
}

#[cfg(not(feature = "libvirt"))]
pub(crate) fn libvirt_provider(a: LibvirtArgs) -> Result<Option<LibvirtVm>> {
    match a.domain {
        Some(_) => bail!("this vmbackup was built without the libvirt feature"),
        None => Ok(None),
    }
}

/// A libvirt domain to back up.
#[cfg(feature = "libvirt")]
pub(crate) struct LibvirtVm(pub(crate) backup_core::LibvirtProvider);

#[cfg(feature = "libvirt")]
impl LibvirtVm {
    /// The VM, named `name` or after the domain: the domain's selected
    /// disks; says which it skips.
    fn vm(&self, name: Option<&str>) -> Result<backup_core::Vm> {
        let (vm, skipped) = self.0.vm(name.unwrap_or(&self.0.domain))?;
        for (disk, why) in skipped {
            eprintln!("disk {disk} of domain {} is not backed up: {why}", self.0.domain);
        }
        Ok(vm)
    }
    fn as_provider(&self) -> &dyn backup_core::SnapshotProvider {
        &self.0
    }
}

/// Never made: built without the libvirt feature.
#[cfg(not(feature = "libvirt"))]
pub(crate) enum LibvirtVm {}

#[cfg(not(feature = "libvirt"))]
impl LibvirtVm {
    fn vm(&self, _name: Option<&str>) -> Result<backup_core::Vm> {
        match *self {}
    }
    fn as_provider(&self) -> &dyn backup_core::SnapshotProvider {
        match *self {}
    }
}

fn vm_from_args(name: &str, disks: &[String]) -> Result<Vm> {
    let mut out = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        if let Some(uri) = nbd::bare_uri_disk(d, i) {
            let (name, location) = uri?;
            out.push(VmDisk { name, location });
            continue;
        }
        let (disk_name, path) = match d.split_once('=') {
            Some((n, p)) if !n.contains('/') && !n.is_empty() => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(d);
                let n = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("disk {d:?} has no file name"))?
                    .to_string();
                (n, p)
            }
        };
        let location = path.to_str().with_context(|| format!("disk path {} is not UTF-8", path.display()))?;
        out.push(VmDisk { name: disk_name, location: location.to_string() });
    }
    let vm = Vm { name: name.to_string(), os: backup_core::OsType::Other, disks: out };
    vm.validate()?;
    if vm.disks.is_empty() {
        bail!("a backup needs at least one --disk");
    }
    Ok(vm)
}

/// The JSON of a point as the CLI prints it. The statistics carry the
/// names and meanings of `backup_core::DiskStats` (a point's are its
/// disks' totals, plus `bytes_added`).
pub(crate) fn point_json(p: &PointManifest) -> serde_json::Value {
    let mut out = json!({
        "point": p.id,
        "vm": p.vm,
        "time": p.time.to_string(),
        "consistency": p.consistency.as_str(),
        "wanted_consistency": p.wanted_consistency.as_str(),
        "parent": p.parent,
        "tiers": p.tiers,
        "warnings": p.warnings,
        "bytes_added": p.stats.bytes_added,
        "disks": p.disks.iter().map(|d| {
            let mut disk = json!({
                "name": d.name,
                "size": d.size,
                "block_size": d.block_size,
                "snapshot_method": d.snapshot_method,
            });
            add_stats(&mut disk, &d.stats);
            disk
        }).collect::<Vec<_>>(),
    });
    add_stats(&mut out, &p.stats.totals);
    out
}

/// The statistics of a disk or of a point's totals into a JSON object.
fn add_stats(obj: &mut serde_json::Value, s: &backup_core::DiskStats) {
    let fields = json!({
        "bytes_scanned": s.bytes_scanned,
        "bytes_read": s.bytes_read,
        "bytes_zero": s.bytes_zero,
        "bytes_unchanged": s.bytes_unchanged,
        "bytes_new": s.bytes_new,
        "bytes_deduplicated": s.bytes_deduplicated,
        "bytes_stored": s.bytes_stored,
        "bytes_dirty": s.bytes_dirty,
        "audited_blocks": s.audited_blocks,
        "change_detection": s.change_detection,
        "seconds": s.seconds,
    });
    if let (Some(o), Some(f)) = (obj.as_object_mut(), fields.as_object()) {
        o.extend(f.clone());
    }
}

fn print_point_summary(p: &PointManifest) {
    let t = &p.stats.totals;
    outln!("point {} of vm {} ({})", p.id, p.vm, p.consistency);
    for d in &p.disks {
        let s = &d.stats;
        outln!(
            "  disk {:<16} {:>10}  read {:>10}  new {:>10}  stored {:>10}  {:.2} s  ({})",
            d.name,
            human(d.size),
            human(s.bytes_read),
            human(s.bytes_new),
            human(s.bytes_stored),
            s.seconds,
            s.change_detection
        );
    }
    outln!(
        "  total: read {} of {}, {} new, {} added to the vault, {:.2} s ({}/s)",
        human(t.bytes_read),
        human(t.bytes_scanned),
        human(t.bytes_new),
        human(p.stats.bytes_added),
        t.seconds,
        human((t.bytes_scanned as f64 / t.seconds.max(1e-9)) as u64)
    );
}

/// Bytes in binary units, e.g. "1.5 GiB".
fn human(b: impl Into<u128>) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let b: u128 = b.into();
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Makes glibc give every allocation of 128 KiB or more its own mapping,
/// returned to the system when freed. By default glibc raises that
/// threshold each time such a buffer is freed, so a restore's 2 MiB runs
/// come from the heap after the first one, and what they leave there stays
/// resident: a cold restore of the e2e image peaked at 56 MiB with the
/// default and 43 MiB with this (BENCHMARKS.md). Backups keep the default:
/// fresh pages for every buffer cost a full backup a tenth of its time.
fn release_freed_buffers() {
    // SAFETY: mallopt only changes the allocator's settings, under its own
    // lock.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4G").is_err(), "a block size must fit 32 bits");
        assert_eq!(parse_size_u64("2G"), Ok(2 << 30));
        assert_eq!(parse_size_u64("3t"), Ok(3 << 40));
        assert!(parse_size_u64("99999999T").is_err());
    }

    #[test]
    fn sizes_past_two_to_the_64_are_shown_not_wrapped() {
        // Two disks of 2^63 bytes: a u64 sum wraps to 0 ("0 B").
        let total: u128 = [1u64 << 63, 1u64 << 63].iter().map(|d| u128::from(*d)).sum();
        assert_eq!(human(total), "16.0 EiB");
        assert_eq!(human(1023u64), "1023 B");
    }

    #[test]
    fn disk_args_take_names() {
        let vm = vm_from_args("web", &["root=/x/a.img".into(), "/y/b.img".into()]).expect("valid");
        assert_eq!(vm.disks[0].name, "root");
        assert_eq!(vm.disks[1].name, "b.img");
        assert!(vm_from_args("web", &["/x/a.img".into(), "/y/a.img".into()]).is_err());
    }
}
