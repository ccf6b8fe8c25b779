//! The fuzz targets of `fuzz/` on stable Rust: every parser of outside bytes
//! is fed valid inputs (real vault objects, the README's policies, scripts
//! configs), mutations of them (bit flips, overwritten bytes, truncations,
//! insertions, splices) and random bytes, for a short time each
//! (`FUZZ_SMOKE_MS` per target, default 1500). Passing means no panic.
//! Crashes found are fixed and kept as regression tests here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backup_core::fuzzing;
use backup_core::*;
use testkit::Rng;

/// Interesting values to write over bytes: boundaries of the length and
/// count fields.
const MAGIC_NUMBERS: [u32; 8] = [0, 1, 0x7f, 0xff, 0xffff, 0x40_0000, 0x7fff_ffff, 0xffff_ffff];

fn mutate(input: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.index(4) {
        match rng.index(7) {
            0 if !v.is_empty() => {
                let i = rng.index(v.len());
                v[i] ^= 1 << rng.index(8);
            }
            1 if !v.is_empty() => {
                let i = rng.index(v.len());
                v[i] = rng.next() as u8;
            }
            2 => v.truncate(rng.index(v.len() + 1)),
            3 => {
                let i = rng.index(v.len() + 1);
                let n = rng.index(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            4 if v.len() >= 4 => {
                let i = rng.index(v.len() - 3);
                let m = MAGIC_NUMBERS[rng.index(MAGIC_NUMBERS.len())];
                v[i..i + 4].copy_from_slice(&m.to_le_bytes());
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.index(corpus.len())];
                let at = rng.index(v.len() + 1);
                let from = rng.index(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                // A text-aware mutation: a digit, a quote or a bracket.
                if !v.is_empty() {
                    let i = rng.index(v.len());
                    v[i] = b"0123456789\"{}[],:-. \nx"[rng.index(22)];
                }
            }
        }
    }
    v
}

fn budget() -> Duration {
    Duration::from_millis(std::env::var("FUZZ_SMOKE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500))
}

/// Runs a target over its corpus, then mutations and random inputs until
/// the budget is spent. Returns (inputs run, inputs that parsed).
fn run(name: &str, target: fn(&[u8]) -> bool, corpus: &[Vec<u8>], seed: u64) -> (u64, u64) {
    let mut rng = Rng(seed | 1);
    let (mut runs, mut parsed) = (0u64, 0u64);
    for c in corpus {
        assert!(target(c) || name.contains("random"), "{name}: a valid corpus input does not parse");
        runs += 1;
        parsed += 1;
    }
    let end = Instant::now() + budget();
    while Instant::now() < end {
        for _ in 0..64 {
            let input = if corpus.is_empty() || rng.index(10) == 0 {
                let n = rng.index(512);
                (0..n).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = corpus[rng.index(corpus.len())].clone();
                for _ in 0..1 + rng.index(3) {
                    v = mutate(&v, corpus, &mut rng);
                }
                v
            };
            runs += 1;
            parsed += u64::from(target(&input));
        }
    }
    eprintln!("fuzz smoke {name}: {runs} inputs, {parsed} parsed, no panic");
    (runs, parsed)
}

/// Real vault objects of a small vault: packs, index files, segments and
/// manifests (and manifests' JSON lines).
struct VaultCorpus {
    packs: Vec<Vec<u8>>,
    frames: Vec<Vec<u8>>,
    idx: Vec<Vec<u8>>,
    segments: Vec<Vec<u8>>,
    manifests: Vec<Vec<u8>>,
    manifest_json: Vec<Vec<u8>>,
}

fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn vault_corpus() -> VaultCorpus {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = VaultOptions::default();
    o.pack_target_size = 64 << 10;
    let vault = Vault::init_with(dir.path().join("v"), o).expect("init");
    let img = dir.path().join("d.img");
    let mut data = vec![0u8; 1 << 20];
    for (i, b) in data.iter_mut().enumerate().take(300 << 10) {
        *b = (i * 7 % 251) as u8; // compressible
    }
    let mut rng = Rng(42);
    for b in &mut data[600 << 10..700 << 10] {
        *b = rng.next() as u8; // incompressible
    }
    std::fs::write(&img, &data).expect("write");
    let vm = Vm::from_images("fuzz", &[&img]).expect("vm");
    backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
    let read = |sub: &str| -> Vec<Vec<u8>> {
        files(&vault.path().join(sub)).iter().map(|p| std::fs::read(p).expect("read")).collect()
    };
    let packs = read("packs");
    // Frames as they sit in packs: the first frame of each pack, with a
    // little of what follows.
    let frames = packs.iter().map(|p| p[16..p.len().min(16 + 52 + (64 << 10) + 8)].to_vec()).collect();
    // Manifests need the fixed fuzzing key to pass their MAC: re-sign the
    // JSON line with it through the JSON target's framing.
    let manifests_raw = read("points");
    let manifest_json: Vec<Vec<u8>> =
        manifests_raw.iter().map(|m| m.split(|b| *b == b'\n').next().expect("a line").to_vec()).collect();
    VaultCorpus {
        packs,
        frames,
        idx: read("index"),
        segments: read("segments"),
        manifests: manifests_raw,
        manifest_json,
    }
}

fn policies() -> Vec<Vec<u8>> {
    let readme = include_str!("../../README.md");
    let mut out: Vec<Vec<u8>> = readme
        .split("```toml")
        .skip(1)
        .filter_map(|s| s.split("```").next())
        .map(|s| s.as_bytes().to_vec())
        .filter(|s| fuzzing::policy(s))
        .collect();
    out.push(b"[schedule]\ndaily = [\"02:00\"]\ntimezone = \"UTC\"\n[retention]\ndaily = 7\nweekly = 4\n".to_vec());
    out.retain(|p| fuzzing::policy(p));
    out
}

fn scripts_configs() -> Vec<Vec<u8>> {
    [
        r#"{"pluginName":"ScriptRunner","preScriptLocation":"/etc/pre.sh","postScriptLocation":"/etc/post.sh","preScriptParams":["a","b"],"postScriptParams":[],"preScriptNoOfRetries":2,"postScriptNoOfRetries":1,"timeoutInSeconds":30,"continueBackupOnFailure":true,"fsFreezeEnabled":true}"#,
        r#"{"preScriptLocation":"","postScriptLocation":"","timeoutInSeconds":60}"#,
        r#"{}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn nbd_corpus() -> Vec<Vec<u8>> {
    let mut req = vec![0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1];
    req.extend_from_slice(&[0; 20]);
    vec![
        req,
        [0u32.to_be_bytes(), 4096u32.to_be_bytes(), 0u32.to_be_bytes()].concat(),
        [5u32.to_be_bytes().to_vec(), 3u16.to_be_bytes().to_vec(), b"EIO".to_vec()].concat(),
        b"nbd+unix:///disk?socket=/run/nbd.sock".to_vec(),
        b"nbd://127.0.0.1:10809/export".to_vec(),
    ]
}

/// Regression: the first crash fuzzing found. A manifest with a valid MAC
/// naming a disk of block size 0 made `DiskRecord::blocks` divide by zero;
/// impossible geometry is now refused when the manifest is decoded.
#[test]
fn regression_a_manifest_with_block_size_0_or_impossible_geometry_is_refused_not_divided_by() {
    let v = vault_corpus();
    let json = String::from_utf8(v.manifest_json[0].clone()).expect("utf-8");
    assert!(fuzzing::manifest_json(json.as_bytes()), "the real manifest must parse");
    for (from, to) in [
        ("\"block_size\":65536", "\"block_size\":0"),
        ("\"block_size\":65536", "\"block_size\":3"),
        ("\"entries_per_segment\":2048", "\"entries_per_segment\":0"),
        ("\"size\":1048576", "\"size\":18446744073709551615"),
        ("\"name\":\"d.img\"", "\"name\":\"../d.img\""),
    ] {
        assert!(json.contains(from), "{json}");
        let bad = json.replacen(from, to, 1);
        assert!(!fuzzing::manifest_json(bad.as_bytes()), "accepted {to}");
    }
}

/// A target's name, entry point and corpus.
type Target = (&'static str, fn(&[u8]) -> bool, Vec<Vec<u8>>);

#[test]
fn every_parser_of_outside_bytes_survives_random_and_mutated_input() {
    let v = vault_corpus();
    let mut total = 0;
    let targets: Vec<Target> = vec![
        ("pack_frame", fuzzing::pack_frame, v.frames),
        ("pack_trailer", fuzzing::pack_trailer, v.packs),
        ("chunk_index", fuzzing::chunk_index, v.idx),
        ("index_segment", fuzzing::index_segment, v.segments),
        // Real manifests fail the fixed fuzzing key's MAC: random framing only.
        ("manifest (random)", fuzzing::manifest, v.manifests),
        ("manifest_json", fuzzing::manifest_json, v.manifest_json),
        ("policy", fuzzing::policy, policies()),
        ("scripts_config", fuzzing::scripts_config, scripts_configs()),
        ("nbd", fuzzing::nbd, nbd_corpus()),
        #[cfg(feature = "libvirt")]
        ("domain_xml", fuzzing::domain_xml, libvirt_corpus().0),
        #[cfg(feature = "libvirt")]
        ("agent_replies", fuzzing::agent_replies, libvirt_corpus().1),
    ];
    let n = targets.len();
    for (i, (name, target, corpus)) in targets.into_iter().enumerate() {
        let (runs, _) = run(name, target, &corpus, 0x1234_5678 + i as u64);
        total += runs;
    }
    eprintln!("fuzz smoke: {total} inputs over {n} targets, no panic");
}

/// Guest disks made by hand: an MBR with a logical partition, and an LVM2
/// PV (label, metadata area, text) holding one linear logical volume.
fn guest_disk_corpus() -> Vec<Vec<u8>> {
    let put = |d: &mut Vec<u8>, at: usize, bytes: &[u8]| d[at..at + bytes.len()].copy_from_slice(bytes);
    let mut mbr = vec![0u8; 64 << 10];
    for (i, (kind, start, len)) in [(0x83u8, 2u32, 10u32), (0x05, 20, 40)].into_iter().enumerate() {
        mbr[446 + 16 * i + 4] = kind;
        put(&mut mbr, 446 + 16 * i + 8, &start.to_le_bytes());
        put(&mut mbr, 446 + 16 * i + 12, &len.to_le_bytes());
    }
    put(&mut mbr, 510, &[0x55, 0xaa]);
    mbr[20 * 512 + 446 + 4] = 0x83;
    put(&mut mbr, 20 * 512 + 446 + 8, &1u32.to_le_bytes());
    put(&mut mbr, 20 * 512 + 446 + 12, &5u32.to_le_bytes());
    put(&mut mbr, 21 * 512 - 2, &[0x55, 0xaa]);

    let mut pv = vec![0u8; 256 << 10];
    let uuid = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    put(&mut pv, 512, b"LABELONE");
    put(&mut pv, 512 + 20, &32u32.to_le_bytes());
    put(&mut pv, 512 + 24, b"LVM2 001");
    put(&mut pv, 512 + 32, uuid);
    // Data areas (one), then metadata areas (one at 4096), each list ended by zeros.
    put(&mut pv, 512 + 72, &(64u64 << 10).to_le_bytes());
    put(&mut pv, 512 + 104, &4096u64.to_le_bytes());
    put(&mut pv, 512 + 112, &(60u64 << 10).to_le_bytes());
    let text = format!(
        "vg {{\nid = \"x\"\nextent_size = 8\nphysical_volumes {{\npv0 {{\nid = \"{}\"\npe_start = 128\n}}\n}}\nlogical_volumes {{\nlv {{\nstatus = [\"READ\", \"VISIBLE\"]\nsegment1 {{\nstart_extent = 0\nextent_count = 4\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv0\", 0]\n}}\n}}\n}}\n}}\n",
        String::from_utf8_lossy(uuid)
    );
    put(&mut pv, 4096 + 4, b" LVM2 x[5A%r0N*>");
    put(&mut pv, 4096 + 24, &4096u64.to_le_bytes());
    put(&mut pv, 4096 + 32, &(60u64 << 10).to_le_bytes());
    put(&mut pv, 4096 + 40, &512u64.to_le_bytes());
    put(&mut pv, 4096 + 48, &(text.len() as u64).to_le_bytes());
    put(&mut pv, 4096 + 512, text.as_bytes());
    vec![mbr, pv]
}

/// The targets added for the reliability issue, each with its corpus: the
/// kept seed corpus (`fuzz/corpus/TARGET`, what parses of it) and the
/// objects made here.
fn more_targets() -> Vec<Target> {
    let (configs, sealed) = encrypted_corpus();
    let mut targets: Vec<Target> = vec![
        ("vault_config", fuzzing::vault_config, configs),
        ("sealed", fuzzing::sealed, sealed),
        ("nbd_client", fuzzing::nbd_client, nbd_client_corpus()),
        ("guest_disk", fuzzing::guest_disk, guest_disk_corpus()),
    ];
    #[cfg(feature = "object-store")]
    targets.push(("gc_mark", fuzzing::gc_mark, gc_mark_corpus()));
    #[cfg(feature = "libvirt")]
    targets.push(("domain_rewrite", fuzzing::domain_rewrite, rewrite_corpus()));
    for (name, target, corpus) in &mut targets {
        for f in files_if_any(&seed_dir(name)) {
            let bytes = std::fs::read(&f).expect("read seed");
            if target(&bytes) && !corpus.contains(&bytes) {
                corpus.push(bytes);
            }
        }
    }
    targets
}

#[test]
fn the_config_sealed_objects_nbd_client_gc_marks_and_domain_rewrite_survive_random_and_mutated_input() {
    let mut total = 0;
    for (i, (name, target, corpus)) in more_targets().into_iter().enumerate() {
        assert!(!corpus.is_empty(), "{name} has no corpus");
        total += run(name, target, &corpus, 0x9e37_79b9 + i as u64).0;
    }
    eprintln!("fuzz smoke (more targets): {total} inputs, no panic");
}

/// Where a target's kept seed corpus lives.
fn seed_dir(target: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn files_if_any(dir: &std::path::Path) -> Vec<PathBuf> {
    if dir.is_dir() { files(dir) } else { Vec::new() }
}

/// Writes the seed corpus kept in the repository (`fuzz/corpus/TARGET/`)
/// from real objects made here: `cargo test -p backup-core --features
/// libvirt,object-store --test fuzz_smoke -- --ignored write_the_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the formats change"]
fn write_the_seed_corpus() {
    let v = vault_corpus();
    let mut all: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("pack_frame", v.frames),
        ("pack_trailer", v.packs),
        ("chunk_index", v.idx),
        ("index_segment", v.segments),
        ("manifest", v.manifests),
        ("manifest_json", v.manifest_json),
        ("policy", policies()),
        ("scripts_config", scripts_configs()),
        ("nbd", nbd_corpus()),
    ];
    #[cfg(feature = "libvirt")]
    {
        all.push(("domain_xml", libvirt_corpus().0));
        all.push(("agent_replies", libvirt_corpus().1));
    }
    for (name, _, corpus) in more_targets() {
        all.push((name, corpus));
    }
    for (name, corpus) in all {
        let dir = seed_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for c in corpus {
            let id = blake3::hash(&c).to_hex();
            std::fs::write(dir.join(&id.as_str()[..16]), &c).expect("write seed");
        }
    }
}

/// An encrypted vault's config (opened by the fuzzing key file) and a
/// plain one; sealed files.
fn encrypted_corpus() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    std::fs::write(&key, fuzzing::FUZZ_KEY_FILE).expect("key file");
    let mut o = VaultOptions::default().with_key(KeySource::key_file(&key));
    o.pack_target_size = 64 << 10;
    let vault = Vault::init_with(dir.path().join("enc"), o).expect("init encrypted");
    let img = dir.path().join("d.img");
    let data: Vec<u8> = (0..256u32 << 10).map(|i| (i * 13 % 241) as u8).collect();
    std::fs::write(&img, &data).expect("image");
    let vm = Vm::from_images("fuzz", &[&img]).expect("vm");
    backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
    let plain = Vault::init(dir.path().join("plain")).expect("init plain");
    let configs = vec![
        std::fs::read(vault.path().join("config")).expect("config"),
        std::fs::read(plain.path().join("config")).expect("config"),
    ];
    // Sealed with the fuzzing key: the vault's own sealed objects would
    // fail its AEAD, so only their plaintexts are used.
    let manifest = files(&vault.path().join("points")).first().map(|p| std::fs::read(p).expect("point"));
    let sealed = [b"{\"vm\":\"web\"}".to_vec(), manifest.unwrap_or_default(), vec![0u8; 300]]
        .iter()
        .map(|p| fuzzing::seal_for_corpus(p))
        .collect();
    (configs, sealed)
}

/// A real server's side of an NBD exchange: vmbackup's export of a point,
/// recorded through a proxy while vmbackup's client handshakes (structured
/// replies, `base:allocation`), reads and asks for block status.
fn nbd_client_corpus() -> Vec<Vec<u8>> {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path().join("v")).expect("init");
    let img = dir.path().join("d.img");
    let mut data = vec![0u8; 1 << 20];
    data[..64 << 10].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    std::fs::write(&img, &data).expect("image");
    let vm = Vm::from_images("fuzz", &[&img]).expect("vm");
    let point = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;
    let server_sock = dir.path().join("server.sock");
    let proxy_sock = dir.path().join("proxy.sock");
    let server =
        NbdServer::bind(&vault, &point, "d.img", &ExportAddress::Unix(server_sock.clone()), ExportOptions::default())
            .expect("bind");
    let proxy = UnixListener::bind(&proxy_sock).expect("proxy");
    let stop = CancelToken::new();
    std::thread::scope(|s| {
        s.spawn(|| server.serve(&stop));
        let recorder = s.spawn(|| {
            let (client, _) = proxy.accept().expect("accept");
            let upstream = UnixStream::connect(&server_sock).expect("connect");
            let (mut c_read, mut u_write) = (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut u_write);
            });
            let (mut u_read, mut c_write) = (upstream, client);
            let mut recorded = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = u_read.read(&mut buf) {
                if n == 0 {
                    break;
                }
                recorded.extend_from_slice(&buf[..n]);
                if c_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            recorded
        });
        let addr = NbdAddress::parse(&format!("nbd+unix:///?socket={}", proxy_sock.display())).expect("address");
        let dev = NbdDevice::open(&addr, &NbdOptions::default()).expect("open through the proxy");
        let mut buf = vec![0u8; 4096];
        dev.read_at(0, &mut buf).expect("read");
        let _ = dev.allocated(0..1 << 20).expect("block status");
        drop(dev);
        let recorded = recorder.join().expect("recorder");
        stop.cancel();
        let mut out = vec![recorded.clone()];
        // The handshake alone, too.
        out.push(recorded[..recorded.len().min(200)].to_vec());
        out.retain(|r| fuzzing::nbd_client(r));
        out
    })
}

/// A gc mark as a remote gc writes it.
#[cfg(feature = "object-store")]
fn gc_mark_corpus() -> Vec<Vec<u8>> {
    vec![
        br#"{"created":"2026-12-03T10:00:00Z","grace_secs":86400,"packs":["7f3c9a0e5b2d41c8a6e9f0b1c2d3e4f5"],"segments":["a3f1c9e27b5d4e8f90a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d"]}"#.to_vec(),
        br#"{"created":"2026-01-01T00:00:00Z","packs":[],"segments":[]}"#.to_vec(),
    ]
}

/// Domain XML whose disks a restore rewrites.
#[cfg(feature = "libvirt")]
fn rewrite_corpus() -> Vec<Vec<u8>> {
    let test_guest = "<domain type='qemu'><name>g</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
        <features><acpi/></features><os><type arch='x86_64' machine='pc'>hvm</type><kernel>/g/vmlinuz</kernel>\
        <initrd>/g/initrd.img</initrd><cmdline>root=/dev/vda</cmdline><nvram>/var/lib/n.fd</nvram></os>\
        <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/g/guest.qcow2'/>\
        <target dev='vda' bus='virtio'/></disk><interface type='network'><mac address='52:54:00:1:2:3'/>\
        <source network='default'/></interface><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>\
        </channel><serial type='file'><source path='/g/console.log'/><target port='0'/></serial>\
        <console type='pty'><target type='serial' port='0'/></console><graphics type='vnc' port='5901'/></devices></domain>";
    let mut out = libvirt_corpus().0;
    out.push(test_guest.as_bytes().to_vec());
    out.retain(|x| fuzzing::domain_rewrite(x));
    out
}

/// Domain XML as libvirt writes it (disks of every kind) and guest agent
/// replies as qemu-ga 7.2 and virtio-win give them.
#[cfg(feature = "libvirt")]
fn libvirt_corpus() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let xml = r#"<domain type='kvm' id='3'><name>web</name><uuid>6f1e0a52-2c1b-4d0e-9d41-3c2f7f2e9a10</uuid>
  <memory unit='KiB'>2097152</memory><os><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web.qcow2' index='2'/><backingStore/>
      <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/vg0/web-data' index='1'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'><host name='mon1' port='6789'/></source>
      <target dev='vdc' bus='virtio'/></disk>
    <disk type='file' device='disk'><source file='/srv/shared.img'/><target dev='vdd' bus='virtio'/><shareable/></disk>
  </devices></domain>"#;
    let info = r#"{"return":{"version":"7.2.22","supported_commands":[{"enabled":true,"name":"guest-ping","success-response":true},{"enabled":true,"name":"guest-fsfreeze-freeze","success-response":true},{"enabled":true,"name":"guest-fsfreeze-thaw","success-response":true},{"enabled":false,"name":"guest-exec","success-response":true},{"enabled":true,"name":"guest-exec-status","success-response":true},{"enabled":true,"name":"guest-file-open","success-response":true}]}}"#;
    let os = r#"{"return":{"name":"Microsoft Windows Server 2022","kernel-release":"20348","version":"Microsoft Windows Server 2022","variant":"server","pretty-name":"Windows Server 2022 Datacenter","version-id":"2022","variant-id":"server","kernel-version":"10.0","machine":"x86_64","id":"mswindows"}}"#;
    let replies = format!("{info}\0{os}").into_bytes();
    let linux = br#"{"return":{"id":"debian","name":"Debian GNU/Linux","pretty-name":"Debian GNU/Linux 12 (bookworm)","kernel-release":"6.1.0-28-amd64"}}"#;
    let mut second = info.as_bytes().to_vec();
    second.push(0);
    second.extend_from_slice(linux);
    (vec![xml.as_bytes().to_vec()], vec![replies, second])
}

#[cfg(feature = "libvirt")]
#[test]
fn the_libvirt_corpus_parses() {
    let (xml, replies) = libvirt_corpus();
    assert!(fuzzing::domain_xml(&xml[0]));
    assert!(replies.iter().all(|r| fuzzing::agent_replies(r)));
}

/// Regression: a pack whose header's reserved bytes were flipped passed
/// every check (the randomized corruption test can pick those bytes).
#[test]
fn regression_a_pack_header_with_nonzero_reserved_bytes_is_refused() {
    let v = vault_corpus();
    let mut pack = v.packs[0].clone();
    assert!(fuzzing::pack_trailer(&pack));
    pack[13] ^= 0x10;
    assert!(!fuzzing::pack_trailer(&pack));
}
