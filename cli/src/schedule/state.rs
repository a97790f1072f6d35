//! What a job remembers between runs, the lock that keeps two runs of one job apart, and
//! the run history.
//!
//! Layout of the state dir (`state_dir` in the schedule file):
//!
//! ```text
//! history.csv            one line per run of any job (appended under a file lock)
//! JOB/state.json         JobState: runs, last success, the run in progress (written by rename)
//! JOB/lock               held (flock) by the process running JOB, holding its PID
//! JOB/run-START/         the run dir of the run in progress (journal, run.json, temp files)
//! JOB/runs/START.json    the stats of each run (the last KEEP_STATS are kept)
//! JOB/failed.dump        ids the last run could not recover, for `mend dc -f`
//! JOB/differences.dump   ids a verify job found differing
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The version of `state.json`'s layout.
pub const STATE_VERSION: u32 = 1;

/// Stats files kept per job.
pub const KEEP_STATS: usize = 100;

/// The history file in the state dir.
pub const HISTORY: &str = "history.csv";

/// Where a run's keys come from, as remembered (a resumed run must use the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Every range compared by fingerprints.
    Full,
    /// Versions written at or after this time (ns).
    Since(u64),
}

impl Source {
    /// How the source reads in the history and logs: `full` or `since <RFC 3339>`.
    pub fn describe(&self) -> String {
        match self {
            Source::Full => "full".into(),
            Source::Since(ns) => format!("since {}", show_ns(*ns)),
        }
    }
}

/// A run that started and has not finished: if the process dies, the next run of the job
/// resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRun {
    /// Its run dir (the engine's run.json and journal).
    pub run_dir: PathBuf,
    /// When it first started (ns).
    pub started_ns: u64,
    /// Its key source.
    pub source: Source,
    /// The process that started it (last).
    pub pid: u32,
}

/// What the last run of a job did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// Start (ns; for a resumed run, when it first started).
    pub start_ns: u64,
    /// End (ns).
    pub end_ns: u64,
    /// This process's part of the run (ns): wall time from (re)start to end.
    pub duration_ns: u64,
    /// `full`, `since …`, `verify`, with `, resumed` when it continued an interrupted run.
    pub source: String,
    /// 0 converged / in sync, 1 something differs or failed.
    pub exit_status: u8,
    /// Keys compared one by one (keys decided; for verify, differing ids).
    pub keys: u64,
    /// Keys that differed.
    pub differing: u64,
    /// Writes that succeeded.
    pub copied: u64,
    /// Keys that failed or could not be recovered.
    pub failed: u64,
    /// Value bytes copied.
    pub bytes: u64,
    /// Bytes sent and received on the wire.
    pub wire_bytes: u64,
    /// Why the run failed as a whole, if it did.
    pub error: Option<String>,
}

/// What a job remembers (`JOB/state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// Layout version.
    pub version: u32,
    /// Runs finished.
    pub runs: u64,
    /// Start (ns) of the last run that converged: the next incremental run's `-t`, less the
    /// overlap.
    pub last_success_start_ns: Option<u64>,
    /// End (ns) of that run.
    pub last_success_end_ns: Option<u64>,
    /// Start (ns) of the last full compare that converged.
    pub last_full_start_ns: Option<u64>,
    /// Runs finished since that full compare.
    pub runs_since_full: u64,
    /// The last run.
    pub last_run: Option<LastRun>,
    /// The run in progress, or interrupted.
    pub current: Option<CurrentRun>,
}

impl JobState {
    /// The state file of the job whose state dir is `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Reads a job's state; a job that never ran has the default.
    pub fn load(dir: &Path) -> anyhow::Result<JobState> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state: JobState = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "state file {} is not valid (remove it to start the job afresh)",
                        path.display()
                    )
                })?;
                if state.version != STATE_VERSION {
                    anyhow::bail!(
                        "state file {} has layout version {}, this mend reads {STATE_VERSION}",
                        path.display(),
                        state.version
                    );
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JobState {
                version: STATE_VERSION,
                ..JobState::default()
            }),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes a job's state atomically.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        write_atomically(&Self::path(dir), &bytes)
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a
/// torn one, even across a crash: a temp file beside it, synced, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<_, std::io::Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Nanoseconds since the epoch as RFC 3339 (UTC, to the millisecond).
pub fn show_ns(ns: u64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => ns.to_string(),
    }
}

/// Why a job's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process runs the job now.
    #[error("job {job:?} is already running ({}; lock {})", .pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")), .path.display())]
    Busy {
        /// The job.
        job: String,
        /// The lock file.
        path: PathBuf,
        /// The PID the holder wrote in it, if it did yet.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}", path = .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive right to run one job: an advisory lock (flock) on `JOB/lock`, which holds
/// the holder's PID. The kernel releases the lock when the holder exits however it exits,
/// so a lock is never stuck; a PID left in an unlocked file marks a holder that died
/// (kill -9, crash, reboot), and the next holder says it takes that stale lock over.
#[derive(Debug)]
pub struct JobLock {
    file: File,
    path: PathBuf,
}

impl JobLock {
    /// Takes the lock of `job` at `path` without waiting. Returns the lock and the PID of
    /// a dead holder whose stale lock was taken over, if any.
    pub fn acquire(job: &str, path: &Path) -> Result<(JobLock, Option<u32>), LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Busy {
                    job: job.to_string(),
                    path: path.to_path_buf(),
                    pid: read_pid(&mut file),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let stale = read_pid(&mut file);
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok((
            JobLock {
                file,
                path: path.to_path_buf(),
            },
            stale,
        ))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who holds the lock at `path` now, without taking it (taking it, even shared and
    /// briefly, could make a run that starts at that moment skip): the PID in the file if
    /// that process is alive. A PID of a dead process is a stale lock.
    pub fn holder(path: &Path) -> Holder {
        let Ok(mut f) = File::open(path) else {
            return Holder::Free;
        };
        match read_pid(&mut f) {
            None => Holder::Free,
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => Holder::Running(pid),
            Some(pid) => Holder::Stale(pid),
        }
    }
}

/// Who holds a job's lock, as far as `status` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nobody.
    Free,
    /// A live process.
    Running(u32),
    /// A dead process left its PID: the next run takes the lock over.
    Stale(u32),
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // An empty file is a released lock. Unlock explicitly rather than by closing: a
        // child forked at this moment (a plugin, or another test's process) shares the
        // open file description until its exec, and would hold the flock with it.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// One line of `history.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryRow {
    /// Run start (RFC 3339).
    pub start: String,
    /// Run end (RFC 3339).
    pub end: String,
    /// The job.
    pub job: String,
    /// `full`, `since …`, `verify` (`, resumed`).
    pub source: String,
    /// Keys compared one by one.
    pub keys_compared: u64,
    /// Keys that differed.
    pub differing: u64,
    /// Writes that succeeded.
    pub copied: u64,
    /// Keys that failed.
    pub failed: u64,
    /// Value bytes copied.
    pub bytes: u64,
    /// Bytes on the wire.
    pub wire_bytes: u64,
    /// The run's exit status (0, 1).
    pub exit_status: u8,
}

/// Appends `row` to the history in `state_dir`, with a header if the file is new. Runs of
/// different jobs may finish at once (from cron, in other processes): the file is locked
/// while the line is written.
pub fn append_history(state_dir: &Path, row: &HistoryRow) -> anyhow::Result<()> {
    let path = state_dir.join(HISTORY);
    let result = (|| {
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.lock()?;
        let empty = file.metadata()?.len() == 0;
        let mut w = csv::WriterBuilder::new()
            .has_headers(empty)
            .from_writer(Vec::new());
        w.serialize(row).map_err(std::io::Error::other)?;
        let bytes = w
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        file.write_all(&bytes)?;
        file.sync_data()?;
        file.unlock()
    })();
    result.with_context(|| format!("cannot append to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_busy_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let (held, stale) = JobLock::acquire("j", &path).unwrap();
        assert_eq!(stale, None);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock is per open file: a second open in this process conflicts like another
        // process would.
        match JobLock::acquire("j", &path) {
            Err(e @ LockError::Busy { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                let text = e.to_string();
                assert!(text.contains("already running"), "{text}");
                assert!(
                    text.contains(&format!("pid {}", std::process::id())),
                    "{text}"
                );
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(JobLock::holder(&path), Holder::Running(std::process::id()));
        drop(held);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert_eq!(JobLock::holder(&path), Holder::Free);
        let (_again, stale) = JobLock::acquire("j", &path).unwrap();
        assert_eq!(stale, None, "a released lock is not stale");
    }

    #[test]
    fn a_stale_lock_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        // A process that has exited, whose PID is left in the lock file as after kill -9.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&path, format!("{dead}\n")).unwrap();
        assert_eq!(JobLock::holder(&path), Holder::Stale(dead));
        let (lock, stale) = JobLock::acquire("j", &path).unwrap();
        assert_eq!(stale, Some(dead));
        assert_eq!(
            std::fs::read_to_string(lock.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn state_round_trips_and_a_missing_file_is_a_fresh_job() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = JobState::load(dir.path()).unwrap();
        assert_eq!(fresh.version, STATE_VERSION);
        assert_eq!(fresh.runs, 0);
        let state = JobState {
            version: STATE_VERSION,
            runs: 3,
            last_success_start_ns: Some(5),
            current: Some(CurrentRun {
                run_dir: dir.path().join("run-9"),
                started_ns: 9,
                source: Source::Since(4),
                pid: 1,
            }),
            ..JobState::default()
        };
        state.save(dir.path()).unwrap();
        assert_eq!(JobState::load(dir.path()).unwrap(), state);
        std::fs::write(JobState::path(dir.path()), "{ torn").unwrap();
        let e = format!("{:#}", JobState::load(dir.path()).unwrap_err());
        assert!(e.contains("state.json") && e.contains("afresh"), "{e}");
    }

    #[test]
    fn history_gets_one_header_and_a_line_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let row = |job: &str| HistoryRow {
            start: show_ns(1_700_000_000_000_000_000),
            end: show_ns(1_700_000_001_500_000_000),
            job: job.into(),
            source: Source::Since(1_699_999_000_000_000_000).describe(),
            keys_compared: 10,
            differing: 2,
            copied: 4,
            failed: 0,
            bytes: 400,
            wire_bytes: 9000,
            exit_status: 0,
        };
        append_history(dir.path(), &row("a")).unwrap();
        append_history(dir.path(), &row("b")).unwrap();
        let text = std::fs::read_to_string(dir.path().join(HISTORY)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0],
            "start,end,job,source,keys_compared,differing,copied,failed,bytes,wire_bytes,exit_status"
        );
        assert_eq!(
            lines[1],
            "2023-11-14T22:13:20.000Z,2023-11-14T22:13:21.500Z,a,since 2023-11-14T21:56:40.000Z,10,2,4,0,400,9000,0"
        );
        let rows: Vec<HistoryRow> = csv::Reader::from_path(dir.path().join(HISTORY))
            .unwrap()
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![row("a"), row("b")]);
    }
}
