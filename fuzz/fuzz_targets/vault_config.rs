#![no_main]
//! Fuzzes `backup_core::fuzzing::vault_config`; it must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = backup_core::fuzzing::vault_config(data);
});
