#![no_main]
//! Fuzzes `backup_core::fuzzing::guest_disk` (partition tables, probes and
//! LVM metadata: bytes a guest controls); it must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = backup_core::fuzzing::guest_disk(data);
});
