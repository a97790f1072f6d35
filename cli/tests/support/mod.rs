//! Test harness: a cluster dir in a temp dir, real `mend node` processes on loopback
//! ports chosen by the kernel (port 0), readiness awaited from their `ready` lines, and a
//! small `mend` runner (after ripgrep's TestCommand).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `mend` binary under test.
pub fn mend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mend"))
}

/// A cluster dir made by `mend init --base-port 0`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Option<Child>,
}

impl Cluster {
    /// `mend init` with `groups` × `per_group` nodes on port 0; nodes not started.
    pub fn init(groups: u32, per_group: u32) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(mend_bin())
            .args(["init", "--base-port", "0", "--groups", &groups.to_string()])
            .args(["--nodes-per-group", &per_group.to_string(), "--dir"])
            .arg(dir.path().join("c"))
            .output()
            .expect("run mend init");
        assert!(
            out.status.success(),
            "mend init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { dir, nodes: None }
    }

    /// `init` then `mend node --all`, awaiting every node's ready line.
    pub fn start(groups: u32, per_group: u32) -> Cluster {
        let mut c = Cluster::init(groups, per_group);
        c.start_nodes(groups * per_group);
        c
    }

    /// The cluster dir.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    /// Starts `mend node --all` and waits until `count` nodes said they are ready.
    pub fn start_nodes(&mut self, count: u32) {
        let child = spawn_ready(
            Command::new(mend_bin())
                .args(["node", "--all", "--cluster"])
                .arg(self.path()),
            count,
        );
        self.nodes = Some(child);
    }

    /// Kills the node process with SIGKILL (no clean shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.nodes.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// Stops the node process with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.nodes.take().expect("nodes running");
        let pid = c.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        c.wait().expect("reap")
    }

    /// A `mend` command with `--cluster` set through the environment.
    pub fn mend(&self) -> Command {
        let mut cmd = Command::new(mend_bin());
        cmd.env("MEND_CLUSTER", self.path());
        cmd
    }

    /// Runs `mend ARGS…` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.mend().args(args).output().expect("run mend")
    }

    /// Runs `mend ARGS…`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mend {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `mend stat --json` for `key` in `groups`, parsed.
    pub fn stat(&self, groups: &str, key: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["stat", "-g", groups, key, "--json"]);
        serde_json::from_str(&out).expect("stat --json is JSON")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.nodes.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `cmd` and waits (at most 60 s) until it printed `count` lines starting with
/// "ready"; panics with its stderr if it exits first.
pub fn spawn_ready(cmd: &mut Command, count: u32) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mend node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ready ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut l = log2.lock().unwrap();
            if l.len() < 64 * 1024 {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < count {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(_) => seen += 1,
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mend node exited with {status}: {}", log.lock().unwrap());
                }
                assert!(
                    Instant::now() < deadline,
                    "nodes not ready in 60 s: {}",
                    log.lock().unwrap()
                );
            }
        }
    }
    child
}

/// Writes `bytes` to a new file under `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}
