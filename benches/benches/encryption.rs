//! Criterion benchmarks of encryption at rest.
//!
//! `aead`: the two AEADs the vault could seal chunks with, at the default
//! block size (64 KiB), on this CPU: AES-256-GCM (AES-NI and PCLMULQDQ,
//! detected at run time by RustCrypto) with a fresh BLAKE3-derived subkey
//! per message, as the vault seals (see `backup-core/src/vault/crypto.rs`),
//! and XChaCha20-Poly1305 (AVX2). The vault uses the faster; BENCHMARKS.md
//! has the figures.

use aes_gcm::aead::{AeadInOut, KeyInit};
use chacha20poly1305::aead::{AeadInPlace as _, KeyInit as _};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BLOCK: usize = 64 << 10;

fn aead(c: &mut Criterion) {
    let mut data = vec![0u8; BLOCK];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let key = [7u8; 32];
    let mut g = c.benchmark_group("aead");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.bench_function("aes256gcm_subkey_seal_64k", |b| {
        let mut buf = data.clone();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 24];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            let mut h = blake3::Hasher::new_keyed(&key);
            h.update(&nonce[..12]);
            let sub = h.finalize();
            let cipher = aes_gcm::Aes256Gcm::new_from_slice(sub.as_bytes()).expect("32-byte key");
            buf.copy_from_slice(&data);
            let n = aes_gcm::Nonce::try_from(&nonce[12..]).expect("12 bytes");
            let tag = cipher.encrypt_inout_detached(&n, b"aad", buf.as_mut_slice().into()).expect("seals");
            std::hint::black_box(tag);
        })
    });
    g.bench_function("aes256gcm_open_64k", |b| {
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).expect("32-byte key");
        let nonce = aes_gcm::Nonce::try_from(&[1u8; 12][..]).expect("12 bytes");
        let mut sealed = data.clone();
        let tag = cipher.encrypt_inout_detached(&nonce, b"aad", sealed.as_mut_slice().into()).expect("seals");
        let mut buf = sealed.clone();
        b.iter(|| {
            buf.copy_from_slice(&sealed);
            cipher.decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag).expect("opens");
        })
    });
    g.bench_function("xchacha20poly1305_seal_64k", |b| {
        let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).expect("32-byte key");
        let mut buf = data.clone();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 24];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            buf.copy_from_slice(&data);
            let tag = cipher
                .encrypt_in_place_detached(chacha20poly1305::XNonce::from_slice(&nonce), b"aad", &mut buf)
                .expect("seals");
            std::hint::black_box(tag);
        })
    });
    g.bench_function("xchacha20poly1305_open_64k", |b| {
        let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).expect("32-byte key");
        let nonce = chacha20poly1305::XNonce::from_slice(&[1u8; 24]);
        let mut sealed = data.clone();
        let tag = cipher.encrypt_in_place_detached(nonce, b"aad", &mut sealed).expect("seals");
        let mut buf = sealed.clone();
        b.iter(|| {
            buf.copy_from_slice(&sealed);
            cipher.decrypt_in_place_detached(nonce, b"aad", &mut buf, &tag).expect("opens");
        })
    });
    g.finish();
}

criterion_group!(benches, aead);
criterion_main!(benches);
