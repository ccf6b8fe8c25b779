//! Encryption at rest: round trips, no plaintext in the vault's files, every
//! kind of tampering caught (a changed byte, swapped chunks, a changed or
//! swapped segment, a manifest from another vault or another point), wrong
//! keys refused before any work, and key slots added and removed without
//! touching the data.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use backup_core::*;
use testkit::Rng;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const BLOCK: usize = 64 * KIB;
/// Written into the disks; must never be found in an encrypted vault's files.
const CANARY: &[u8] = b"<<VMBACKUP-PLAINTEXT-CANARY-7f3a>>";
const PASSPHRASE: &str = "correct horse battery staple";

/// Cheap Argon2id parameters: the tests make many slots.
fn cheap(options: VaultOptions) -> VaultOptions {
    let mut o = options;
    o.kdf = KdfParams::new(64, 1, 1);
    o.pack_target_size = 256 * KIB as u64;
    o
}

fn with_passphrase(p: &str) -> VaultOptions {
    cheap(VaultOptions::default().with_key(KeySource::passphrase(p)))
}

/// A disk image: random blocks (stored raw), text-like blocks (stored LZ4),
/// zero blocks, and the canary in every non-zero block.
fn disk_image(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; size];
    for (i, block) in data.chunks_mut(BLOCK).enumerate() {
        match i % 4 {
            0 => block.copy_from_slice(&rng.bytes(block.len())),
            1 => {
                let line = format!("log line {i}: the quick brown fox {} jumps\n", rng.next() % 1000);
                for (j, b) in block.iter_mut().enumerate() {
                    *b = line.as_bytes()[j % line.len()];
                }
            }
            2 => continue,
            _ => block[..BLOCK / 2].copy_from_slice(&rng.bytes(BLOCK / 2)),
        }
        let at = (rng.next() as usize) % (block.len() - CANARY.len());
        block[at..at + CANARY.len()].copy_from_slice(CANARY);
    }
    data
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    images: BTreeMap<String, Vec<u8>>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let mut images = BTreeMap::new();
        images.insert("root.img".to_string(), disk_image(2 * MIB, 1));
        images.insert("data.img".to_string(), disk_image(MIB + 3 * KIB, 2));
        let f = Fixture { _dir: dir, root, images };
        f.write_images();
        f
    }

    fn write_images(&self) {
        for (name, data) in &self.images {
            fs::write(self.root.join(name), data).expect("write image");
        }
    }

    fn vm(&self) -> Vm {
        let paths: Vec<PathBuf> = self.images.keys().map(|n| self.root.join(n)).collect();
        Vm::from_images("web", &paths).expect("vm")
    }

    fn backup(&self, vault: &Vault) -> PointManifest {
        backup(vault, &ImageFileProvider::new(), &self.vm(), &BackupOptions::default()).expect("backup").point
    }

    /// Changes one block of each disk.
    fn change(&mut self, seed: u64) {
        let mut rng = Rng(seed);
        for data in self.images.values_mut() {
            let at = BLOCK * 4;
            data[at..at + BLOCK].copy_from_slice(&rng.bytes(BLOCK));
        }
        self.write_images();
    }

    fn assert_restores(&self, vault: &Vault, point: &PointManifest, images: &BTreeMap<String, Vec<u8>>) {
        let out = tempfile::tempdir_in(&self.root).expect("tempdir");
        let out = out.path();
        restore_vm(vault, point, out, &RestoreOptions::default()).expect("restore");
        for (name, data) in images {
            assert!(fs::read(out.join(name)).expect("restored file") == *data, "disk {name} differs");
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            if p.is_dir() { todo.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir).into_iter().map(|p| (p.clone(), fs::read(&p).expect("read"))).collect()
}

/// The files under `dir` that hold `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| fs::read(p).expect("read").windows(needle.len()).any(|w| w == needle))
        .collect()
}

#[test]
fn encrypted_full_and_incremental_backups_restore_bit_for_bit_and_verify_clean() {
    let mut f = Fixture::new();
    let path = f.root.join("vault");
    let vault = Vault::init_with(&path, with_passphrase(PASSPHRASE)).expect("init");
    assert!(vault.is_encrypted());
    let first = f.backup(&vault);
    let first_images = f.images.clone();
    f.change(9);
    let second = f.backup(&vault);
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    // Dedup still works inside the vault: only the changed blocks are new.
    assert_eq!(second.stats.totals.bytes_new, 2 * BLOCK as u64);
    drop(vault);

    let vault = Vault::open_with(&path, with_passphrase(PASSPHRASE)).expect("open");
    f.assert_restores(&vault, &first, &first_images);
    f.assert_restores(&vault, &second, &f.images);
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.points, 2);
    assert_eq!(vault.vm_record("web").expect("vm record").map(|r| r.vm), Some("web".to_string()));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(path.join("config")).expect("config")).expect("json");
    assert_eq!(config["format_version"], 2);
    assert!(config.get("chunk_key").is_none(), "{config}");
}

#[test]
fn no_plaintext_from_the_disks_reaches_an_encrypted_vaults_files_but_a_plain_vault_shows_it() {
    let mut f = Fixture::new();
    // The scan finds the canary where it is stored in clear, so it can fail.
    let plain = Vault::init_with(f.root.join("plain"), cheap(VaultOptions::default())).expect("init");
    f.backup(&plain);
    assert!(!holding(plain.path(), CANARY).is_empty(), "the canary is not in the plain vault: the scan is blind");

    let vault = Vault::init_with(f.root.join("enc"), with_passphrase(PASSPHRASE)).expect("init");
    f.backup(&vault);
    f.change(3);
    f.backup(&vault);
    let files = files_under(vault.path());
    assert!(files.iter().any(|p| p.extension().is_some_and(|e| e == "pack")), "no pack was written");
    assert_eq!(holding(vault.path(), CANARY), Vec::<PathBuf>::new(), "plaintext found in the encrypted vault");
    assert_eq!(holding(vault.path(), PASSPHRASE.as_bytes()), Vec::<PathBuf>::new(), "passphrase found");
    // A text-like block, as the disk holds it (32 bytes of it), is not there either.
    let text = &f.images["root.img"][BLOCK..BLOCK + 32];
    assert_eq!(holding(vault.path(), text), Vec::<PathBuf>::new());
}

/// Frame header offsets (see the pack module doc).
const FRAME_HEADER: usize = 52;

/// The frames of a pack: (offset, stored_len), from its chunk index file.
fn frames(vault: &Path, pack: &Path) -> Vec<(usize, usize)> {
    let stem = pack.file_stem().and_then(|s| s.to_str()).expect("pack id");
    let idx = fs::read(vault.join("index").join(format!("{stem}.idx"))).expect("idx");
    let body = &idx[8..idx.len() - 24];
    body.chunks_exact(56)
        .map(|e| {
            let off = u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")) as usize;
            let stored = u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")) as usize;
            (off, stored)
        })
        .collect()
}

/// Sets a frame's crc32 to match its (changed) bytes, as a forger would.
fn fix_crc(pack: &mut [u8], off: usize, stored: usize) {
    let mut c = crc32fast::Hasher::new();
    c.update(&pack[off..off + 16]);
    c.update(&pack[off + 20..off + FRAME_HEADER + stored]);
    let crc = c.finalize();
    pack[off + 16..off + 20].copy_from_slice(&crc.to_le_bytes());
}

fn packs(vault: &Path) -> Vec<PathBuf> {
    files_under(&vault.join("packs"))
}

/// An encrypted vault with two points, and the fixture.
fn encrypted_vault(name: &str) -> (Fixture, Vault, PointManifest, PointManifest) {
    let mut f = Fixture::new();
    let vault = Vault::init_with(f.root.join(name), with_passphrase(PASSPHRASE)).expect("init");
    let a = f.backup(&vault);
    f.change(5);
    let b = f.backup(&vault);
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());
    (f, vault, a, b)
}

fn tampered_problems(vault: &Vault) -> Vec<Problem> {
    let report = verify(vault, &VerifyOptions::default()).expect("verify");
    assert!(!report.ok(), "verify found nothing");
    report.problems.into_iter().filter(Problem::is_tampered).collect()
}

#[test]
fn a_changed_byte_in_a_sealed_chunk_is_reported_as_damage_and_as_tampering_once_its_crc_is_forged() {
    let (f, vault, _, b) = encrypted_vault("v");
    let pack = packs(vault.path()).remove(0);
    let (off, stored) = frames(vault.path(), &pack)[0];
    let original = fs::read(&pack).expect("pack");
    let mut bytes = original.clone();
    bytes[off + FRAME_HEADER + stored / 2] ^= 0x10;
    fs::write(&pack, &bytes).expect("write");
    // The crc catches damage by chance first.
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.problems.iter().any(|p| p.what.contains("crc32 mismatch")), "{:?}", report.problems);

    fix_crc(&mut bytes, off, stored);
    fs::write(&pack, &bytes).expect("write");
    let tampered = tampered_problems(&vault);
    assert!(
        tampered.iter().any(|p| p.what.contains(&format!("at byte {off}")) && p.what.contains("fails authentication")),
        "{tampered:?}"
    );
    // A restore that needs the chunk fails naming the damage, unless one is allowed zeros.
    let err = restore_vm(&vault, &b, &f.root.join("out"), &RestoreOptions::default()).expect_err("restore");
    assert!(err.is_corruption(), "{err}");
}

#[test]
fn two_sealed_chunks_swapped_are_caught_even_with_their_crcs_forged() {
    let (_f, vault, _, _) = encrypted_vault("v");
    // Two frames of the same stored length (random blocks are stored raw).
    let (pack, a, b, stored) = packs(vault.path())
        .into_iter()
        .find_map(|p| {
            let fr = frames(vault.path(), &p);
            fr.iter()
                .enumerate()
                .find_map(|(i, x)| fr[i + 1..].iter().find(|y| y.1 == x.1).map(|y| (p.clone(), x.0, y.0, x.1)))
        })
        .expect("two frames of one length");
    let mut bytes = fs::read(&pack).expect("pack");
    let pa = bytes[a + FRAME_HEADER..a + FRAME_HEADER + stored].to_vec();
    let pb = bytes[b + FRAME_HEADER..b + FRAME_HEADER + stored].to_vec();
    bytes[a + FRAME_HEADER..a + FRAME_HEADER + stored].copy_from_slice(&pb);
    bytes[b + FRAME_HEADER..b + FRAME_HEADER + stored].copy_from_slice(&pa);
    fix_crc(&mut bytes, a, stored);
    fix_crc(&mut bytes, b, stored);
    fs::write(&pack, &bytes).expect("write");
    let tampered = tampered_problems(&vault);
    for off in [a, b] {
        assert!(tampered.iter().any(|p| p.what.contains(&format!("at byte {off}"))), "{off}: {tampered:?}");
    }
}

#[test]
fn a_changed_or_swapped_index_segment_is_reported_as_tampered() {
    let (_f, vault, _, _) = encrypted_vault("v");
    let segments = files_under(&vault.path().join("segments"));
    assert!(segments.len() >= 2);
    let original = fs::read(&segments[0]).expect("segment");
    let mut changed = original.clone();
    let n = changed.len();
    changed[n / 2] ^= 1;
    fs::write(&segments[0], &changed).expect("write");
    let tampered = tampered_problems(&vault);
    assert!(tampered.iter().any(|p| p.what.contains("index segment") && p.disk.is_some()), "{tampered:?}");

    // Another segment of this vault under the first one's name.
    fs::copy(&segments[1], &segments[0]).expect("copy");
    let tampered = tampered_problems(&vault);
    assert!(tampered.iter().any(|p| p.what.contains("index segment")), "{tampered:?}");
}

#[test]
fn a_manifest_from_another_encrypted_vault_or_another_point_is_reported_as_tampered() {
    let (f, vault, a, b) = encrypted_vault("one");
    // Another vault, same passphrase, same VM and disk names.
    let other = Vault::init_with(f.root.join("two"), with_passphrase(PASSPHRASE)).expect("init");
    let foreign = f.backup(&other);
    let here = vault.path().join("points").join("web");
    // Under its own point id, and over a point of this vault.
    fs::copy(other.path().join("points/web").join(&foreign.id), here.join(&foreign.id)).expect("copy");
    let err = vault.read_point("web", &foreign.id).expect_err("foreign manifest");
    assert!(matches!(err, Error::Tampered { .. }), "{err}");
    let tampered = tampered_problems(&vault);
    assert!(tampered.iter().any(|p| p.what.contains(&foreign.id)), "{tampered:?}");
    fs::remove_file(here.join(&foreign.id)).expect("remove");
    let saved = fs::read(here.join(&a.id)).expect("manifest");
    fs::copy(other.path().join("points/web").join(&foreign.id), here.join(&a.id)).expect("copy");
    assert!(matches!(vault.read_point("web", &a.id), Err(Error::Tampered { .. })));

    // This vault's own manifest of point b, under point a's name.
    fs::copy(here.join(&b.id), here.join(&a.id)).expect("copy");
    let err = vault.read_point("web", &a.id).expect_err("moved manifest");
    assert!(matches!(err, Error::Tampered { .. }), "{err}");
    fs::write(here.join(&a.id), saved).expect("put back");
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());

    // A manifest in clear (from a vault without encryption) is refused too.
    let plain = Vault::init_with(f.root.join("plain"), cheap(VaultOptions::default())).expect("init");
    let p = f.backup(&plain);
    fs::copy(plain.path().join("points/web").join(&p.id), here.join(&p.id)).expect("copy");
    let err = vault.read_point("web", &p.id).expect_err("unsealed manifest");
    assert!(err.to_string().contains("not sealed"), "{err}");
}

#[test]
fn a_wrong_or_missing_passphrase_is_refused_on_open_before_any_work() {
    let (_f, vault, _, _) = encrypted_vault("v");
    let path = vault.path().to_path_buf();
    drop(vault);
    let before = tree(&path);
    let err = Vault::open_with(&path, with_passphrase("Correct horse battery staple")).expect_err("wrong");
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    let err = Vault::open(&path).expect_err("no key");
    assert!(matches!(err, Error::KeyRequired { .. }), "{err}");
    let kf = path.parent().expect("parent").join("not-a-slot.key");
    generate_key_file(&kf).expect("key file");
    let err = Vault::open_with(&path, cheap(VaultOptions::default().with_key(KeySource::key_file(&kf))))
        .expect_err("key file with no slot");
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    assert!(tree(&path) == before, "a refused open changed the vault");
}

#[test]
fn key_slots_are_added_and_removed_without_touching_the_data_and_the_last_one_stays() {
    let (f, vault, _, b) = encrypted_vault("v");
    let path = vault.path().to_path_buf();
    let packs_before: Vec<(PathBuf, Vec<u8>)> =
        packs(&path).into_iter().map(|p| (p.clone(), fs::read(&p).expect("read"))).collect();
    let first = vault.key_slots().expect("slots");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].kind, SlotKind::Passphrase);
    assert_eq!(first[0].kdf, Some(KdfParams::new(64, 1, 1)));

    let kf = f.root.join("vault.key");
    generate_key_file(&kf).expect("key file");
    let second = vault.add_key(&KeySource::passphrase("second passphrase")).expect("add");
    let file_slot = vault.add_key(&KeySource::key_file(&kf)).expect("add key file");
    assert_eq!(file_slot.kind, SlotKind::KeyFile);
    assert_eq!(vault.key_slots().expect("slots").len(), 3);
    drop(vault);

    for key in [KeySource::passphrase(PASSPHRASE), KeySource::passphrase("second passphrase"), KeySource::key_file(&kf)]
    {
        let v = Vault::open_with(&path, cheap(VaultOptions::default().with_key(key.clone()))).expect("open");
        f.assert_restores(&v, &v.read_point("web", &b.id).expect("point"), &f.images);
    }
    let vault = Vault::open_with(&path, with_passphrase("second passphrase")).expect("open");
    vault.remove_key(&first[0].id).expect("remove");
    assert!(matches!(Vault::open_with(&path, with_passphrase(PASSPHRASE)), Err(Error::WrongKey { .. })));
    vault.remove_key(&file_slot.id).expect("remove");
    let err = vault.remove_key(&second.id).expect_err("the last slot");
    assert!(err.to_string().contains("last key slot"), "{err}");
    assert!(matches!(vault.remove_key("00000000"), Err(Error::NotFound { .. })));
    assert_eq!(vault.key_slots().expect("slots").iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![second.id]);

    let packs_after: Vec<(PathBuf, Vec<u8>)> =
        packs(&path).into_iter().map(|p| (p.clone(), fs::read(&p).expect("read"))).collect();
    assert!(packs_before == packs_after, "key slot changes touched the packs");
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());
    // A vault without encryption has no slots to add to.
    let plain = Vault::init(f.root.join("plain")).expect("init");
    assert!(matches!(plain.add_key(&KeySource::passphrase("x")), Err(Error::InvalidArgument { .. })));
}

#[test]
fn a_plain_vault_is_written_as_format_version_1_and_refuses_a_key_so_a_swapped_config_cannot_downgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v");
    drop(Vault::init(&path).expect("init"));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(path.join("config")).expect("config")).expect("json");
    assert_eq!(config["format_version"], 1);
    assert!(config.get("encryption").is_none());
    assert!(config["chunk_key"].is_string());
    assert!(!Vault::open(&path).expect("open").is_encrypted());
    let err = Vault::open_with(&path, with_passphrase("anything")).expect_err("a key for a plain vault");
    assert!(matches!(err, Error::WrongKey { .. }) && err.to_string().contains("not encrypted"), "{err}");

    // An encrypted vault whose config was swapped for a plain one: a caller
    // with the passphrase is refused instead of writing in clear.
    let enc = dir.path().join("enc");
    drop(Vault::init_with(&enc, with_passphrase(PASSPHRASE)).expect("init"));
    fs::copy(path.join("config"), enc.join("config")).expect("swap the config");
    let err = Vault::open_with(&enc, with_passphrase(PASSPHRASE)).expect_err("downgraded");
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
}

#[test]
fn gc_repacks_sealed_chunks_unchanged_and_the_remaining_point_still_restores() {
    let mut f = Fixture::new();
    let vault = Vault::init_with(f.root.join("v"), with_passphrase(PASSPHRASE)).expect("init");
    let first = f.backup(&vault);
    // Half of the first point's blocks are no longer in the second: every
    // other block, so that each of the first backup's packs (one per
    // worker, each holding a run of neighbours) keeps live and dead chunks
    // whatever way the workers split the disk.
    for data in f.images.values_mut() {
        let fresh = disk_image(data.len(), 77);
        for (i, block) in data.chunks_mut(64 << 10).enumerate() {
            if i % 2 == 0 {
                let at = i * (64 << 10);
                block.copy_from_slice(&fresh[at..at + block.len()]);
            }
        }
    }
    f.write_images();
    let second = f.backup(&vault);
    fs::remove_file(vault.path().join("points/web").join(&first.id)).expect("drop the first point");
    let mut o = GcOptions::default();
    o.grace = std::time::Duration::ZERO;
    o.repack_threshold = 0.0;
    let report = gc(&vault, &o).expect("gc");
    assert!(report.packs_repacked > 0, "{report:?}");
    f.assert_restores(&vault, &second, &f.images);
    assert_eq!(holding(vault.path(), CANARY), Vec::<PathBuf>::new());
}
