//! The dump-file parser (`engine/src/dump.rs`) on arbitrary bytes.
//!
//! Properties:
//! - it never panics, and reading from memory never fails as I/O;
//! - it agrees with a plain model over bytes: the ids are the words (split on space, tab,
//!   CR and LF) that are 128 hex digits, and the first other word is the error, named by
//!   its 1-based line and word;
//! - it gives the same answer read a byte at a time (lines cut across buffer refills);
//! - what it returns, written back one id per line as `dump::write` does, parses to the
//!   same ids.

#![no_main]

use std::io::BufReader;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mend_engine::dump::{self, DumpError};
use mend_engine::Id;

// Links the heap meter, whose hard limit makes an allocation bomb a crash.
extern crate mend_fuzz;

fuzz_target!(|data: &[u8]| {
    let origin = Path::new("fuzz.dump");
    let whole = dump::parse(origin, data);
    let trickled = dump::parse(origin, BufReader::with_capacity(1, data));
    assert_eq!(outcome(&whole), outcome(&trickled), "depends on buffering");
    assert_eq!(outcome(&whole), model(data), "differs from the model");
    match whole {
        Ok(ids) => {
            let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
            let back = dump::parse(origin, text.as_bytes()).expect("written ids parse");
            assert_eq!(back, ids, "ids do not survive a write and a parse");
        }
        Err(DumpError::Malformed { path, text, .. }) => {
            assert_eq!(path, origin);
            assert!(text.chars().count() <= 40, "the quoted word is not cut");
        }
        Err(e @ DumpError::Io { .. }) => panic!("reading from memory failed: {e}"),
    }
});

/// The ids, or the (line, word) of the first malformed word.
type Outcome = Result<Vec<Id>, (usize, usize)>;

fn outcome(parsed: &Result<Vec<Id>, DumpError>) -> Outcome {
    match parsed {
        Ok(ids) => Ok(ids.clone()),
        Err(DumpError::Malformed { line, word, .. }) => Err((*line, *word)),
        Err(DumpError::Io { .. }) => Err((0, 0)),
    }
}

fn model(data: &[u8]) -> Outcome {
    let mut ids = Vec::new();
    for (n, line) in data.split(|b| *b == b'\n').enumerate() {
        let words = line
            .split(|b| matches!(b, b' ' | b'\t' | b'\r'))
            .filter(|w| !w.is_empty());
        for (w, word) in words.enumerate() {
            if word.len() != 128 || !word.iter().all(u8::is_ascii_hexdigit) {
                return Err((n + 1, w + 1));
            }
            let mut id = [0u8; 64];
            for (i, pair) in word.chunks(2).enumerate() {
                let digit = |c: u8| (c as char).to_digit(16).unwrap() as u8;
                id[i] = digit(pair[0]) << 4 | digit(pair[1]);
            }
            ids.push(Id(id));
        }
    }
    Ok(ids)
}
