//! Any bytes as any import table, as CSV and as JSON Lines, then the
//! reference check: every problem is a row error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ml_data::import::{Format, Import, TABLES};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let table = TABLES[pick as usize % TABLES.len()];
    let format = if pick & 0x80 == 0 { Format::Csv } else { Format::JsonLines };
    let text = String::from_utf8_lossy(rest);
    let mut import = Import::default();
    import.read(table, "fuzz", format, &text);
    import.check_references(&[], &[]);
    for e in &import.errors {
        assert!(!e.reason.is_empty());
    }
});
