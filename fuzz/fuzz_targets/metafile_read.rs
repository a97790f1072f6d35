//! The metadata-file reader (`engine/src/metafile.rs`) on arbitrary file contents.
//!
//! Properties (see `mend_fuzz::read_metafile`): it never panics, holds at most about two
//! frames of heap whatever lengths the file claims, ids it yields strictly increase, it
//! ends after its first error, and `summarize` agrees with it. Random bytes rarely get
//! past a frame's CRC; `metafile_mutate` starts from valid files to reach the decoder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mend_fuzz::{read_metafile, scratch_file};

fuzz_target!(|data: &[u8]| {
    let content = read_metafile(scratch_file(data));
    if let Err(e) = content {
        // Every error names the file it is about.
        assert!(e.to_string().contains("input"), "{e}");
    }
});
