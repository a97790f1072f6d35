//! What mend's fuzz targets share: a heap meter (so that "decoding stays within its size
//! limit" is a property a target asserts, not a hope), a poll-once executor for the async
//! frame reader over in-memory bytes, and a scratch file for the readers that want a path.
//!
//! The meter is this crate's global allocator, so it counts every allocation of every
//! target. It also turns an allocation bomb into a crash libFuzzer saves: past
//! [`HARD_LIMIT`] bytes live it aborts. libFuzzer's own `-malloc_limit_mb` needs the
//! sanitizer runtime's malloc hooks, which a `-s none` build (all stable Rust allows) does
//! not have.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

/// Live heap bytes past which the process aborts (libFuzzer reports a crash and saves the
/// input). Far above what any target's property allows, far below the machine's memory.
pub const HARD_LIMIT: usize = 1 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their high-water mark.
#[derive(Debug)]
pub struct Meter;

#[global_allocator]
static METER: Meter = Meter;

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
    if live > HARD_LIMIT {
        // No formatting: that could allocate, here of all places.
        let _ = std::io::stderr().write_all(b"mend-fuzz: more than HARD_LIMIT bytes live\n");
        std::process::abort();
    }
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping on atomics, which neither allocates nor touches the memory handed out.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Runs `f` and returns its result with the most heap it held live at once, in bytes
/// above what was live when it started (libFuzzer runs targets on one thread).
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Polls `future` once: it reads from memory, so it must be ready.
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a future over in-memory bytes is pending"),
    }
}

/// Overwrites this process's scratch file with `bytes` and returns its path. The file
/// lives in a directory under `$TMPDIR` that is never removed (libFuzzer ends the process
/// with `exit`); `scripts/fuzz.sh` points `TMPDIR` at a directory it removes.
pub fn scratch_file(bytes: &[u8]) -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("mend-fuzz-")
            .tempdir()
            .expect("a scratch directory")
            .keep()
            .join("input")
    });
    std::fs::write(path, bytes).expect("the scratch file is written");
    path
}

/// What a metadata file reads as: its header and records, or the first error.
pub type MetaContent = Result<
    (
        mend_engine::metafile::MetaHeader,
        Vec<(mend_engine::Id, mend_engine::Record)>,
    ),
    mend_engine::metafile::MetaError,
>;

/// Reads the metadata file at `path` to its end and checks what every reader of it relies
/// on: ids strictly increase, the iterator ends (and stays ended) after a valid footer or
/// after its first error, the heap held stays within the frame limit, and
/// [`summarize`](mend_engine::metafile::summarize) agrees.
pub fn read_metafile(path: &Path) -> MetaContent {
    use mend_engine::metafile::{self, MetaReader, MAX_FRAME};
    // The read buffer (64 KiB), one payload and what it decodes into (each at most
    // MAX_FRAME), and room for an error message.
    const BUDGET: usize = 2 * MAX_FRAME + (256 << 10);
    let (content, peak) = peak_during(|| -> MetaContent {
        let mut reader = MetaReader::open(path)?;
        let header = reader.header().clone();
        let mut records: Vec<(mend_engine::Id, mend_engine::Record)> = Vec::new();
        let mut failed = None;
        for item in reader.by_ref() {
            match item {
                Ok((id, record)) => {
                    if let Some((last, _)) = records.last() {
                        assert!(id > *last, "ids do not strictly increase");
                    }
                    records.push((id, record));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        assert!(reader.next().is_none(), "the reader goes on after its end");
        assert_eq!(reader.records_read(), records.len() as u64);
        match failed {
            Some(e) => Err(e),
            None => Ok((header, records)),
        }
    });
    assert!(peak <= BUDGET, "reading held {peak} bytes of heap");
    let summary = metafile::summarize(path);
    match &content {
        Ok((header, records)) => {
            assert_eq!(summary.status, Ok(()));
            assert_eq!(summary.header.as_ref(), Some(header));
            assert_eq!(summary.records, records.len() as u64);
            assert_eq!(summary.first, records.first().map(|r| r.0));
            assert_eq!(summary.last, records.last().map(|r| r.0));
        }
        Err(e) => assert_eq!(summary.status, Err(e.to_string())),
    }
    content
}
