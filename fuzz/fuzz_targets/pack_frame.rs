#![no_main]
//! Fuzzes `backup_core::fuzzing::pack_frame`; it must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = backup_core::fuzzing::pack_frame(data);
});
