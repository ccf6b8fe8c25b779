#![no_main]
//! Fuzzes `backup_core::fuzzing::nbd_client`; it must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = backup_core::fuzzing::nbd_client(data);
});
