//! The vhd reader on hostile input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hotate_fuzz::exercise(hotate_engine::Format::Vhd, "vhd", data);
});
