//! `exec`: a recovery policy that is an external program (`mend dc -C COMMAND`), spoken to
//! in versioned JSON lines. This adapter is the one place in the policies that does I/O;
//! it validates everything the plugin says before the engine sees it.
//!
//! # Protocol, version 1
//!
//! The engine runs `/bin/sh -c COMMAND` (so `-C 'python3 plugin.py --flag'` works) with
//! its standard input and output as pipes; its standard error goes to `mend`'s. Every
//! message is one line of compact JSON (UTF-8, `\n`-terminated). Lines the engine writes
//! carry their fields in the order shown (a shell plugin may rely on `"id"` being the
//! first field of `"key"`); a plugin must ignore fields it does not know in them (a
//! version 1 engine may add fields, never change or remove one).
//!
//! 1. Once, when the first batch of keys is decided, the engine writes the header:
//!
//!    ```json
//!    {"mend_plugin":1,"run":{"groups":[1,2,3],"safe":false,"dry_run":false}}
//!    ```
//!
//!    A plugin that does not speak version `mend_plugin` must exit non-zero (saying why
//!    on its standard error).
//! 2. Then, for each key, one at a time, the engine writes a key line and waits for the
//!    answer before it writes the next key:
//!
//!    ```json
//!    {"key":{"id":"<128 hex>","replicas":[{"index":0,"group":1,"node":"g1n1","proper":true,"state":"live","timestamp":1700000000000000000,"size":5,"checksum":"<64 hex>","user_flags":0,"mergeable":false},{"index":1,"group":2,"node":"g2n1","proper":true,"state":"absent","timestamp":null,"size":null,"checksum":null,"user_flags":null,"mergeable":false}]}}
//!    ```
//!
//!    `state` is `absent`, `live`, `tombstone` or `corrupt` (a corrupt copy counts as
//!    absent: it can be overwritten, never copied). `index` is what actions refer to.
//!    Keys in a differing range may already be in sync: their answer is no action.
//! 3. The plugin answers with exactly one decision line for that key:
//!
//!    ```json
//!    {"id":"<128 hex>","actions":[{"copy":{"from":0,"to":[1,2]}}],"reason":"newest wins"}
//!    ```
//!
//!    `actions` (in order) is any of `{"copy":{"from":I,"to":[J,…]}}`,
//!    `{"remove":{"on":[J,…],"keep":I}}`, `{"merge":{"sources":[I,…],"to":[J,…]}}` or
//!    `{"merge":{"sources":[I,…],"to":[J,…],"value_hex":"<hex>"}}`,
//!    `{"skip":{"reason":"…"}}` and `{"unrecoverable":{"reason":"…"}}`; an empty list
//!    means nothing to do. `reason` is optional: with no actions, the key is reported as
//!    skipped with it; it is also the reason of a `skip` that gives none. Unknown fields,
//!    unknown actions and an id other than the key asked are errors.
//!
//!    A merge writes a new version, one nanosecond newer than its newest source, flagged
//!    mergeable, to `to`. Its value is `value_hex` when given (the plugin's own merge,
//!    at most [`MAX_VALUE_BYTES`]; the adapter keeps it for the engine until the batch is
//!    carried out), else the line-set union of the sources' values
//!    ([`union_lines`]).
//! 4. Before its decision, a plugin may ask for the value of a replica of the key being
//!    decided, as many times as it needs:
//!
//!    ```json
//!    {"request":"value","id":"<128 hex>","replica":0}
//!    ```
//!
//!    The engine answers with one line, `{"value":"<hex of the bytes>"}`, or
//!    `{"error":"…"}` if the value could not be read or is larger than
//!    [`MAX_VALUE_BYTES`] (the plugin decides what to do then). Asking for a replica
//!    that holds no live healthy value is a protocol error.
//!
//! The engine closes the plugin's standard input and ends it (its whole process group,
//! with SIGKILL) when the run is over or fails: a plugin must not count on getting EOF.
//!
//! # What the engine checks
//!
//! Every decision goes through [`validate`] here, before any key of the batch is acted
//! on: a copy must come from a replica holding a healthy version and must not replace a
//! newer one, a removal must keep a copy at least as new, indices must exist. Any of these
//! failures stops the run with a [`PolicyError`] naming the plugin command, the line of
//! its output and the key, and nothing of the batch is carried out:
//!
//! - a decision the engine refuses, for an id other than the one asked, or a line that
//!   is not such JSON (or is longer than [`MAX_LINE_BYTES`]);
//! - the plugin exits (whatever its status) or closes its output before answering;
//! - the plugin takes longer than [`ExecConfig::batch_timeout`] for one batch (the time
//!   the engine spends reading values for it does not count): it is killed.
//!
//! The engine then applies `--safe` and `--dry-run` on top of what the plugin decided.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mend_engine::policy::{validate, Action, KeyState, PolicyError, RecoveryPolicy, ValueFetch};
use mend_engine::{Id, ReplicaState};
use serde::{Deserialize, Serialize};

use crate::union::union_lines;

/// The protocol version this adapter speaks (the header's `mend_plugin`).
pub const PROTOCOL_VERSION: u32 = 1;

/// The default of [`ExecConfig::batch_timeout`].
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest value sent to a plugin (a value request) or taken from it (`value_hex`).
pub const MAX_VALUE_BYTES: u64 = 16 << 20;

/// The longest line a plugin may write: a merge of [`MAX_VALUE_BYTES`] in hex, and room
/// for the rest of the decision.
pub const MAX_LINE_BYTES: usize = 2 * MAX_VALUE_BYTES as usize + (1 << 20);

/// Configuration of [`ExecPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The plugin: a command line for `/bin/sh -c`.
    pub command: String,
    /// The run's groups, in the order replicas are listed (sent in the header).
    pub groups: Vec<u32>,
    /// The run's `--safe` (sent in the header; the engine applies it whatever the plugin
    /// decides).
    pub safe: bool,
    /// The run's `--dry-run` (likewise).
    pub dry_run: bool,
    /// How long the plugin may take to decide one batch of keys, value reads excluded.
    pub batch_timeout: Duration,
}

impl ExecConfig {
    /// `command` for a run over `groups`, neither safe nor dry, with
    /// [`DEFAULT_BATCH_TIMEOUT`].
    pub fn new(command: impl Into<String>, groups: Vec<u32>) -> Self {
        ExecConfig {
            command: command.into(),
            groups,
            safe: false,
            dry_run: false,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
        }
    }
}

/// A recovery policy that asks an external program (see the module docs for the
/// protocol).
///
/// The program is started when the first batch is decided and lives for the run; it is
/// killed (its whole process group) when the policy is dropped or fails. After a failure
/// every further batch fails with the same error.
pub struct ExecPolicy {
    config: ExecConfig,
    /// How errors name the plugin.
    label: String,
    session: Mutex<Session>,
    /// The merged values plugins supplied (`value_hex`) for the batch last decided, by id,
    /// until the engine asks for them through [`RecoveryPolicy::merge_values`]. Cleared
    /// when the next batch is decided: the engine carries out a batch before deciding the
    /// next, so this holds one batch's merges at most.
    merged: Mutex<HashMap<Id, Vec<u8>>>,
}

enum Session {
    NotStarted,
    Running(Plugin),
    Failed(PolicyError),
}

impl ExecPolicy {
    /// The policy's name (in reports; the plugin itself is named by its command).
    pub const NAME: &'static str = "exec";

    /// A policy that will run `config.command`.
    pub fn new(config: ExecConfig) -> Self {
        ExecPolicy {
            label: format!("exec plugin `{}`", config.command),
            config,
            session: Mutex::new(Session::NotStarted),
            merged: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ExecConfig {
        &self.config
    }

    fn error(&self, message: String) -> PolicyError {
        PolicyError {
            policy: self.label.clone(),
            message,
        }
    }
}

impl fmt::Debug for ExecPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecPolicy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RecoveryPolicy for ExecPolicy {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// Decides one key as a batch of one. Without values to give (this entry point has
    /// no [`ValueFetch`]), a value request gets an `error` answer; a failure of the plugin
    /// becomes an [`Action::Unrecoverable`] of the key. The engine uses
    /// [`decide_batch`](RecoveryPolicy::decide_batch).
    fn decide(&self, key: &KeyState) -> Vec<Action> {
        match self.decide_batch(std::slice::from_ref(key), &NoValues) {
            Ok(mut decisions) => decisions.pop().unwrap_or_default(),
            Err(e) => vec![Action::Unrecoverable {
                reason: e.to_string(),
            }],
        }
    }

    fn decide_batch(
        &self,
        keys: &[KeyState],
        values: &dyn ValueFetch,
    ) -> Result<Vec<Vec<Action>>, PolicyError> {
        let mut session = self.session.lock().expect("plugin session lock");
        let mut merged = self.merged.lock().expect("merged values lock");
        merged.clear();
        if let Session::Failed(e) = &*session {
            return Err(e.clone());
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if matches!(*session, Session::NotStarted) {
            match Plugin::start(&self.config) {
                Ok(plugin) => *session = Session::Running(plugin),
                Err(message) => {
                    let e = self.error(message);
                    *session = Session::Failed(e.clone());
                    return Err(e);
                }
            }
        }
        let Session::Running(plugin) = &mut *session else {
            unreachable!("started above");
        };
        match plugin.decide_batch(&self.config, keys, values, &mut merged) {
            Ok(decisions) => Ok(decisions),
            Err(message) => {
                plugin.kill();
                merged.clear();
                let e = self.error(message);
                *session = Session::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// The value the plugin gave for this key's merge (`value_hex`), or else the line-set
    /// union of `values`.
    fn merge_values(&self, key: &KeyState, values: &[&[u8]]) -> Option<Vec<u8>> {
        let given = self
            .merged
            .lock()
            .expect("merged values lock")
            .remove(&key.id);
        Some(given.unwrap_or_else(|| union_lines(values)))
    }
}

/// For [`ExecPolicy::decide`], which has no engine to read values through.
struct NoValues;

impl ValueFetch for NoValues {
    fn fetch(&self, _key: &KeyState, _replica: usize) -> Result<Vec<u8>, String> {
        Err("values cannot be read here".into())
    }
}

/// What the reader thread passes on from the plugin's standard output.
enum Output {
    Line(Vec<u8>),
    TooLong,
    Failed(std::io::Error),
}

/// A running plugin: the child, a writer thread feeding its standard input (so that a
/// plugin that stops reading cannot block the engine past the time limit), and a reader
/// thread passing its output lines on. End of output is the reader's channel closing.
struct Plugin {
    child: Child,
    input: Sender<Vec<u8>>,
    output: Receiver<Output>,
    /// Lines of output read so far: the next one is `lines + 1`.
    lines: u64,
    exited: Option<ExitStatus>,
}

impl Plugin {
    fn start(config: &ExecConfig) -> Result<Plugin, String> {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&config.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        #[cfg(unix)]
        {
            // Its own process group, so that ending it ends what the shell started too.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start /bin/sh -c: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (input, to_write) = mpsc::channel();
        let (read, output) = mpsc::sync_channel(64);
        let threads = std::thread::Builder::new()
            .name("mend-plugin-in".into())
            .spawn(move || write_lines(stdin, to_write))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("mend-plugin-out".into())
                    .spawn(move || read_lines(stdout, read))
            });
        let mut plugin = Plugin {
            child,
            input,
            output,
            lines: 0,
            exited: None,
        };
        if let Err(e) = threads {
            plugin.kill();
            return Err(format!("cannot start a thread for the plugin: {e}"));
        }
        plugin.send(&Header {
            mend_plugin: PROTOCOL_VERSION,
            run: RunLine {
                groups: &config.groups,
                safe: config.safe,
                dry_run: config.dry_run,
            },
        });
        Ok(plugin)
    }

    fn send(&self, message: &impl Serialize) {
        let mut line = serde_json::to_vec(message).expect("protocol lines serialize");
        line.push(b'\n');
        // If the writer is gone, the plugin stopped reading: that shows as its output
        // ending or its time running out, which name what happened.
        let _ = self.input.send(line);
    }

    fn decide_batch(
        &mut self,
        config: &ExecConfig,
        keys: &[KeyState],
        values: &dyn ValueFetch,
        merged: &mut HashMap<Id, Vec<u8>>,
    ) -> Result<Vec<Vec<Action>>, String> {
        let mut deadline = Instant::now() + config.batch_timeout;
        let mut decisions = Vec::with_capacity(keys.len());
        for key in keys {
            self.send(&KeyLine::of(key));
            loop {
                let (number, line) = self.next_line(key, deadline, config, keys.len())?;
                let at = |what: String| format!("output line {number}, key {}: {what}", key.id);
                match parse_line(key, &line).map_err(at)? {
                    PluginLine::ValueRequest { replica } => {
                        let started = Instant::now();
                        let answer = answer(key, replica, values);
                        // Reading values is the engine's time, not the plugin's.
                        deadline += started.elapsed();
                        self.send(&answer);
                    }
                    PluginLine::Decision { actions, value } => {
                        if let Some(value) = value {
                            merged.insert(key.id, value);
                        }
                        decisions.push(actions);
                        break;
                    }
                }
            }
        }
        Ok(decisions)
    }

    /// The next line of output and its number, waiting until `deadline` at most.
    fn next_line(
        &mut self,
        key: &KeyState,
        deadline: Instant,
        config: &ExecConfig,
        batch: usize,
    ) -> Result<(u64, Vec<u8>), String> {
        let wanted = self.lines + 1;
        let waiting = || format!("while waiting for output line {wanted} (key {})", key.id);
        let received = self
            .output
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        match received {
            Ok(Output::Line(line)) => {
                self.lines = wanted;
                Ok((wanted, line))
            }
            Ok(Output::TooLong) => Err(format!(
                "output line {wanted}, key {}: longer than {MAX_LINE_BYTES} bytes",
                key.id
            )),
            Ok(Output::Failed(e)) => Err(format!("cannot read its output {}: {e}", waiting())),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "took longer than {:?} to decide a batch of {batch} key{}; killed {}",
                config.batch_timeout,
                if batch == 1 { "" } else { "s" },
                waiting()
            )),
            Err(RecvTimeoutError::Disconnected) => {
                // The output ended: the plugin is exiting, or closed it and lives on.
                Err(match self.wait_until(deadline) {
                    Some(status) if status.success() => {
                        format!("exited with status 0 before answering, {}", waiting())
                    }
                    Some(status) => format!("exited with {status} {}", waiting()),
                    None => format!("closed its output but did not exit; killed {}", waiting()),
                })
            }
        }
    }

    /// The child's exit status once it has exited, waiting until `deadline` at most.
    ///
    /// Only called once its output has ended, when it is exiting in all likelihood; std
    /// has no wait with a time limit, so this polls, backing off from 1 ms.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        let mut pause = Duration::from_millis(1);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Ends the plugin and everything in its process group, and reaps it. The reader and
    /// writer threads end when the pipes close.
    fn kill(&mut self) {
        #[cfg(unix)]
        {
            // The group outlives the shell if the shell started others; a group id is not
            // reused while any member lives, so this reaches only the plugin's processes.
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_child(&self.child),
                rustix::process::Signal::KILL,
            );
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_lines(mut stdin: ChildStdin, lines: Receiver<Vec<u8>>) {
    for line in lines {
        if stdin.write_all(&line).and_then(|()| stdin.flush()).is_err() {
            break;
        }
    }
}

fn read_lines(stdout: ChildStdout, lines: SyncSender<Output>) {
    let mut reader = BufReader::with_capacity(64 << 10, stdout);
    loop {
        let mut line = Vec::new();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let message = match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Output::Line(line)
            }
            Ok(n) if n as u64 == limit => Output::TooLong,
            // The last line, without its newline.
            Ok(_) => Output::Line(line),
            Err(e) => Output::Failed(e),
        };
        let last = !matches!(message, Output::Line(_));
        if lines.send(message).is_err() || last {
            return;
        }
    }
}

/// A line of output for an error message: at most 200 characters.
fn quote(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut quoted: String = text.chars().take(200).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    format!("{quoted:?}")
}

// ---- Lines the engine writes -------------------------------------------------------

#[derive(Serialize)]
struct Header<'a> {
    mend_plugin: u32,
    run: RunLine<'a>,
}

#[derive(Serialize)]
struct RunLine<'a> {
    groups: &'a [u32],
    safe: bool,
    dry_run: bool,
}

#[derive(Serialize)]
struct KeyLine<'a> {
    key: KeyOut<'a>,
}

#[derive(Serialize)]
struct KeyOut<'a> {
    id: String,
    replicas: Vec<ReplicaOut<'a>>,
}

#[derive(Serialize)]
struct ReplicaOut<'a> {
    index: usize,
    group: u32,
    node: &'a str,
    proper: bool,
    state: &'static str,
    timestamp: Option<u64>,
    size: Option<u64>,
    checksum: Option<String>,
    user_flags: Option<u64>,
    mergeable: bool,
}

impl<'a> KeyLine<'a> {
    fn of(key: &'a KeyState) -> Self {
        let replicas = key
            .replicas
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let version = r.record.map(|rec| rec.version);
                ReplicaOut {
                    index,
                    group: r.group,
                    node: &r.node,
                    proper: r.proper,
                    state: ReplicaState::of(r.record.as_ref()).as_str(),
                    timestamp: version.map(|v| v.timestamp),
                    size: version.map(|v| v.size),
                    checksum: version.map(|v| v.checksum_hex()),
                    user_flags: version.map(|v| v.user_flags),
                    mergeable: version.is_some_and(|v| v.is_mergeable()),
                }
            })
            .collect();
        KeyLine {
            key: KeyOut {
                id: key.id.to_hex(),
                replicas,
            },
        }
    }
}

/// The answer to a value request.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum ValueAnswer {
    /// `{"value": HEX}`.
    Value(String),
    /// `{"error": WHY}`.
    Error(String),
}

// ---- Lines the plugin writes -------------------------------------------------------

enum FromPlugin {
    Request(ValueRequest),
    Decision(Decision),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueRequest {
    #[allow(dead_code)] // Only `value` parses; the field is there to be checked.
    request: RequestKind,
    id: String,
    replica: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RequestKind {
    Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    id: String,
    actions: Vec<WireAction>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum WireAction {
    Copy {
        from: usize,
        to: Vec<usize>,
    },
    Remove {
        on: Vec<usize>,
        keep: usize,
    },
    Merge {
        sources: Vec<usize>,
        to: Vec<usize>,
        #[serde(default)]
        value_hex: Option<String>,
    },
    Skip {
        #[serde(default)]
        reason: Option<String>,
    },
    Unrecoverable {
        reason: String,
    },
}

/// One line of a plugin's output, parsed and checked against the key being decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginLine {
    /// A value request for a replica of the key that holds a live healthy value.
    ValueRequest {
        /// The replica's index in [`KeyState::replicas`].
        replica: usize,
    },
    /// A decision about the key that [`validate`] accepts.
    Decision {
        /// The actions, in order.
        actions: Vec<Action>,
        /// The merged value the plugin gave (`value_hex`, at most [`MAX_VALUE_BYTES`]).
        value: Option<Vec<u8>>,
    },
}

/// Parses one line a plugin wrote while `key` is being decided, and checks it as the
/// adapter does before acting on it (see the module docs). No I/O, so that it can be
/// tested and fuzzed on its own; the error says what is wrong with the line, quoting it
/// when it is not a value request or decision at all.
pub fn parse_line(key: &KeyState, line: &[u8]) -> Result<PluginLine, String> {
    match parse(line).map_err(|e| format!("{e}; the line: {}", quote(line)))? {
        FromPlugin::Request(request) => {
            check_request(key, &request)?;
            Ok(PluginLine::ValueRequest {
                replica: request.replica,
            })
        }
        FromPlugin::Decision(decision) => {
            let (actions, value) = decision.into_actions(key)?;
            Ok(PluginLine::Decision { actions, value })
        }
    }
}

/// A line of output: a JSON object that is a value request (it has `request`) or a
/// decision.
fn parse(line: &[u8]) -> Result<FromPlugin, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let value = serde_json::Value::Object(object);
    if value.get("request").is_some() {
        serde_json::from_value(value)
            .map(FromPlugin::Request)
            .map_err(|e| format!("malformed value request: {e}"))
    } else {
        serde_json::from_value(value)
            .map(FromPlugin::Decision)
            .map_err(|e| format!("malformed decision: {e}"))
    }
}

/// Checks that a line about `key` names it.
fn check_id(key: &KeyState, id: &str, what: &str) -> Result<(), String> {
    match id.parse::<Id>() {
        Ok(id) if id == key.id => Ok(()),
        Ok(_) => Err(format!(
            "{what} for id {id}, but the key asked is {}",
            key.id
        )),
        Err(e) => Err(format!("{what} for id {id:?}: {e}")),
    }
}

/// Checks that a value request names `key` and a replica of it with a live healthy value.
fn check_request(key: &KeyState, request: &ValueRequest) -> Result<(), String> {
    check_id(key, &request.id, "value request")?;
    let replica = key.replicas.get(request.replica).ok_or_else(|| {
        format!(
            "value request for replica {}, but the key has {}",
            request.replica,
            key.replicas.len()
        )
    })?;
    if replica.healthy().filter(|v| !v.is_tombstone()).is_none() {
        return Err(format!(
            "value request for replica {} ({}), which holds no live healthy value",
            request.replica, replica.node
        ));
    }
    Ok(())
}

/// The answer to a value request for `replica` of `key`, which [`check_request`] passed.
fn answer(key: &KeyState, replica: usize, values: &dyn ValueFetch) -> ValueAnswer {
    let size = key.replicas[replica].healthy().map_or(0, |v| v.size);
    if size > MAX_VALUE_BYTES {
        return ValueAnswer::Error(format!(
            "the value is {size} bytes, more than the {MAX_VALUE_BYTES} a plugin is given"
        ));
    }
    match values.fetch(key, replica) {
        Ok(bytes) if bytes.len() as u64 > MAX_VALUE_BYTES => ValueAnswer::Error(format!(
            "the value is {} bytes, more than the {MAX_VALUE_BYTES} a plugin is given",
            bytes.len()
        )),
        Ok(bytes) => ValueAnswer::Value(hex::encode(bytes)),
        Err(why) => ValueAnswer::Error(format!("cannot read the value: {why}")),
    }
}

impl Decision {
    /// The engine's actions, validated, and the merged value given, if any.
    fn into_actions(self, key: &KeyState) -> Result<(Vec<Action>, Option<Vec<u8>>), String> {
        check_id(key, &self.id, "decision")?;
        let skip_reason = || {
            self.reason
                .clone()
                .unwrap_or_else(|| "skipped by the plugin".into())
        };
        let mut value = None;
        let mut actions = Vec::with_capacity(self.actions.len().max(1));
        for action in &self.actions {
            actions.push(match action {
                WireAction::Copy { from, to } => Action::Copy {
                    from: *from,
                    to: to.clone(),
                },
                WireAction::Remove { on, keep } => Action::Remove {
                    on: on.clone(),
                    keep: *keep,
                },
                WireAction::Merge {
                    sources,
                    to,
                    value_hex,
                } => {
                    if let Some(text) = value_hex {
                        if value.is_some() {
                            return Err("more than one merge with a value_hex".into());
                        }
                        if text.len() as u64 > 2 * MAX_VALUE_BYTES {
                            return Err(format!(
                                "value_hex holds more than {MAX_VALUE_BYTES} bytes"
                            ));
                        }
                        value = Some(
                            hex::decode(text).map_err(|e| format!("value_hex is not hex: {e}"))?,
                        );
                    }
                    Action::Merge {
                        sources: sources.clone(),
                        to: to.clone(),
                    }
                }
                WireAction::Skip { reason } => Action::Skip {
                    reason: reason.clone().unwrap_or_else(skip_reason),
                },
                WireAction::Unrecoverable { reason } => Action::Unrecoverable {
                    reason: reason.clone(),
                },
            });
        }
        if actions.is_empty() {
            if let Some(reason) = &self.reason {
                actions.push(Action::Skip {
                    reason: reason.clone(),
                });
            }
        }
        validate(key, &actions).map_err(|e| format!("decision refused: {e}"))?;
        Ok((actions, value))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use mend_engine::policy::Replica;
    use mend_engine::{Record, Version};

    use super::*;

    /// Values by replica index.
    struct Values(HashMap<usize, Vec<u8>>);

    impl ValueFetch for Values {
        fn fetch(&self, _key: &KeyState, replica: usize) -> Result<Vec<u8>, String> {
            self.0.get(&replica).cloned().ok_or_else(|| "gone".into())
        }
    }

    fn no_values() -> Values {
        Values(HashMap::new())
    }

    /// A key held in group 1 (`old`, timestamp 1) and group 2 (`new`, timestamp 2);
    /// group 3 holds nothing.
    fn key(name: &str) -> KeyState {
        let replica = |group: u32, version: Option<Version>| Replica {
            group,
            node: format!("g{group}n1"),
            proper: true,
            record: version.map(|version| Record {
                version,
                corrupt: false,
            }),
        };
        KeyState {
            id: Id::from_key(name.as_bytes()),
            replicas: vec![
                replica(1, Some(Version::of_value(b"old", 1, 0))),
                replica(2, Some(Version::of_value(b"new", 2, 7))),
                replica(3, None),
            ],
        }
    }

    fn plugin(script: &str) -> ExecPolicy {
        let mut config = ExecConfig::new(script, vec![1, 2, 3]);
        config.batch_timeout = Duration::from_secs(10);
        ExecPolicy::new(config)
    }

    /// A shell plugin answering every key with `decision`, where `$id` is the key's id.
    fn answering(decision: &str) -> String {
        format!(
            r#"read -r header; while IFS= read -r line; do id=${{line#*\"id\":\"}}; id=${{id%%\"*}}; printf '%s\n' "{decision}"; done"#
        )
    }

    fn error_of(policy: &ExecPolicy, keys: &[KeyState]) -> String {
        policy
            .decide_batch(keys, &no_values())
            .expect_err("the plugin fails")
            .to_string()
    }

    #[test]
    fn the_engine_writes_the_header_and_key_lines_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = format!(
            r#"IFS= read -r header; IFS= read -r line; printf '%s\n%s\n' "$header" "$line" > '{}'; id=${{line#*\"id\":\"}}; id=${{id%%\"*}}; printf '{{"id":"%s","actions":[]}}\n' "$id"; read -r _"#,
            log.display()
        );
        let mut config = ExecConfig::new(script, vec![1, 2, 3]);
        config.safe = true;
        let policy = ExecPolicy::new(config);
        let k = key("a");
        assert_eq!(
            policy
                .decide_batch(std::slice::from_ref(&k), &no_values())
                .unwrap(),
            vec![Vec::<Action>::new()]
        );
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"mend_plugin":1,"run":{"groups":[1,2,3],"safe":true,"dry_run":false}}"#
        );
        let new = Version::of_value(b"new", 2, 7);
        let old = Version::of_value(b"old", 1, 0);
        assert_eq!(
            lines[1],
            format!(
                concat!(
                    r#"{{"key":{{"id":"{}","replicas":["#,
                    r#"{{"index":0,"group":1,"node":"g1n1","proper":true,"state":"live","timestamp":1,"size":3,"checksum":"{}","user_flags":0,"mergeable":false}},"#,
                    r#"{{"index":1,"group":2,"node":"g2n1","proper":true,"state":"live","timestamp":2,"size":3,"checksum":"{}","user_flags":7,"mergeable":false}},"#,
                    r#"{{"index":2,"group":3,"node":"g3n1","proper":true,"state":"absent","timestamp":null,"size":null,"checksum":null,"user_flags":null,"mergeable":false}}]}}}}"#
                ),
                k.id,
                old.checksum_hex(),
                new.checksum_hex()
            )
        );
    }

    #[test]
    fn decisions_become_actions_in_order_key_by_key() {
        let policy = plugin(&answering(
            r#"{\"id\":\"$id\",\"actions\":[{\"copy\":{\"from\":1,\"to\":[0,2]}},{\"skip\":{}}],\"reason\":\"newest\"}"#,
        ));
        let keys = [key("a"), key("b"), key("c")];
        let decisions = policy.decide_batch(&keys, &no_values()).unwrap();
        let expected = vec![
            Action::Copy {
                from: 1,
                to: vec![0, 2],
            },
            Action::Skip {
                reason: "newest".into(),
            },
        ];
        assert_eq!(decisions, vec![expected.clone(); 3]);
        // The same plugin goes on with the next batch.
        let decisions = policy.decide_batch(&keys[..1], &no_values()).unwrap();
        assert_eq!(decisions, vec![expected]);
        // No actions with a reason: skipped with it; with none: nothing to do.
        let policy = plugin(&answering(
            r#"{\"id\":\"$id\",\"actions\":[],\"reason\":\"later\"}"#,
        ));
        assert_eq!(
            policy.decide(&key("a")),
            vec![Action::Skip {
                reason: "later".into()
            }]
        );
    }

    #[test]
    fn unknown_fields_actions_and_ids_are_errors_naming_plugin_line_and_key() {
        let k = key("a");
        for (decision, expected) in [
            (
                r#"{\"id\":\"$id\",\"actions\":[],\"colour\":1}"#,
                "unknown field `colour`",
            ),
            (
                r#"{\"id\":\"$id\",\"actions\":[{\"copy\":{\"from\":1,\"to\":[0],\"when\":1}}]}"#,
                "unknown field `when`",
            ),
            (
                r#"{\"id\":\"$id\",\"actions\":[{\"delete\":{}}]}"#,
                "unknown variant `delete`",
            ),
            (r#"{\"id\":\"$id\"}"#, "missing field `actions`"),
            (
                r#"{\"id\":\"00$id\",\"actions\":[]}"#,
                "an id is 128 hex characters",
            ),
            ("[1,2]", "not a JSON object"),
            ("{\\\"id\\\":", "not a JSON object"),
        ] {
            let policy = plugin(&answering(decision));
            let err = error_of(&policy, std::slice::from_ref(&k));
            assert!(err.contains(expected), "{decision}: {err}");
            assert!(
                err.starts_with("policy exec plugin `read -r header;"),
                "{err}"
            );
            assert!(
                err.contains(&format!("output line 1, key {}", k.id)),
                "{err}"
            );
        }
        let other = key("other").id;
        let policy = plugin(&answering(&format!(
            r#"{{\"id\":\"{other}\",\"actions\":[]}}"#
        )));
        let err = error_of(&policy, std::slice::from_ref(&k));
        assert!(
            err.contains(&format!(
                "decision for id {other}, but the key asked is {}",
                k.id
            )),
            "{err}"
        );
    }

    #[test]
    fn a_bad_line_after_good_ones_is_named_by_its_number_and_the_plugin_stays_failed() {
        let script = r#"read -r header; n=0; while IFS= read -r line; do n=$((n+1)); id=${line#*\"id\":\"}; id=${id%%\"*}; if [ $n -lt 3 ]; then printf '{"id":"%s","actions":[]}\n' "$id"; else echo 'oops'; fi; done"#;
        let policy = plugin(script);
        let keys = [key("a"), key("b"), key("c")];
        let err = error_of(&policy, &keys);
        assert!(
            err.contains(&format!(
                "output line 3, key {}: not a JSON object",
                keys[2].id
            )),
            "{err}"
        );
        assert!(err.contains(r#"the line: "oops""#), "{err}");
        // Once failed, always failed: the run must stop.
        assert_eq!(error_of(&policy, &keys[..1]), err);
    }

    #[test]
    fn decisions_the_engine_would_refuse_stop_the_batch() {
        let k = key("a");
        for (actions, expected) in [
            // Replica 2 holds nothing.
            (
                r#"{\"copy\":{\"from\":2,\"to\":[0]}}"#,
                "copy from replica 2 (g3n1), which holds no healthy version",
            ),
            // Replica 1's version is newer than replica 0's.
            (
                r#"{\"copy\":{\"from\":0,\"to\":[1]}}"#,
                "would replace its newer version",
            ),
            // Replica 1 holds the only copy of the newest version.
            (
                r#"{\"remove\":{\"on\":[1],\"keep\":2}}"#,
                "would lose its version",
            ),
            (
                r#"{\"copy\":{\"from\":1,\"to\":[9]}}"#,
                "replica 9 does not exist",
            ),
        ] {
            let policy = plugin(&answering(&format!(
                r#"{{\"id\":\"$id\",\"actions\":[{actions}]}}"#
            )));
            let err = error_of(&policy, std::slice::from_ref(&k));
            assert!(err.contains("decision refused"), "{err}");
            assert!(err.contains(expected), "{actions}: {err}");
        }
    }

    #[test]
    fn a_plugin_that_exits_is_named_with_its_status() {
        let k = key("a");
        let err = error_of(
            &plugin("read -r header; read -r line; exit 3"),
            std::slice::from_ref(&k),
        );
        assert!(
            err.contains(&format!(
                "exited with exit status: 3 while waiting for output line 1 (key {})",
                k.id
            )),
            "{err}"
        );
        let err = error_of(&plugin("exit 0"), std::slice::from_ref(&k));
        assert!(
            err.contains("exited with status 0 before answering"),
            "{err}"
        );
        let mut config = ExecConfig::new("exec >&-; read -r header; sleep 30", vec![1, 2, 3]);
        config.batch_timeout = Duration::from_millis(300);
        let err = error_of(&ExecPolicy::new(config), &[k]);
        assert!(err.contains("closed its output but did not exit"), "{err}");
    }

    /// Whether process `pid` runs (is neither gone nor a zombie waiting for whoever
    /// inherited it to reap it).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// Whether process `pid` stops running within 5 s: a SIGKILL is delivered
    /// asynchronously, and only the plugin's shell is ours to wait for.
    fn ends(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn pid_in(path: &Path) -> u32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_plugin_past_its_time_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        // The shell waits for a child of its own, which must not survive either.
        let script = format!(
            "read -r header; read -r line; sleep 30 & echo $! > '{}'; wait",
            pid.display()
        );
        let mut config = ExecConfig::new(script, vec![1, 2, 3]);
        config.batch_timeout = Duration::from_millis(300);
        let policy = ExecPolicy::new(config);
        let started = Instant::now();
        let k = key("a");
        let err = error_of(&policy, std::slice::from_ref(&k));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            err.contains(&format!(
                "took longer than 300ms to decide a batch of 1 key; killed while waiting for output line 1 (key {})",
                k.id
            )),
            "{err}"
        );
        assert!(ends(pid_in(&pid)), "the plugin's child lives on");
    }

    #[test]
    fn dropping_the_policy_ends_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        let script = format!(
            r#"echo $$ > '{}'; {}"#,
            pid.display(),
            answering(r#"{\"id\":\"$id\",\"actions\":[]}"#)
        );
        let policy = plugin(&script);
        policy.decide_batch(&[key("a")], &no_values()).unwrap();
        let pid = pid_in(&pid);
        assert!(running(pid));
        drop(policy);
        assert!(ends(pid));
    }

    #[test]
    fn value_requests_are_answered_and_a_merged_value_is_kept_for_the_merge() {
        // Asks for replica 1's value, then merges it, doubled, into every replica.
        let script = r#"read -r header; while IFS= read -r line; do id=${line#*\"id\":\"}; id=${id%%\"*}; printf '{"request":"value","id":"%s","replica":1}\n' "$id"; IFS= read -r answer; v=${answer#*\"value\":\"}; v=${v%%\"*}; printf '{"id":"%s","actions":[{"merge":{"sources":[0,1],"to":[0,1,2],"value_hex":"%s%s"}}]}\n' "$id" "$v" "$v"; done"#;
        let policy = plugin(script);
        let k = key("a");
        let values = Values(HashMap::from([(1, b"new".to_vec())]));
        let decisions = policy
            .decide_batch(std::slice::from_ref(&k), &values)
            .unwrap();
        assert_eq!(
            decisions,
            vec![vec![Action::Merge {
                sources: vec![0, 1],
                to: vec![0, 1, 2]
            }]]
        );
        assert_eq!(
            policy.merge_values(&k, &[b"old", b"new"]),
            Some(b"newnew".to_vec())
        );
        // Taken once; without value_hex a merge is the union of the lines.
        assert_eq!(
            policy.merge_values(&k, &[b"b\n", b"a\n"]),
            Some(b"a\nb\n".to_vec())
        );
        // A failed read is answered with an error, and the plugin decides.
        let script = r#"read -r header; while IFS= read -r line; do id=${line#*\"id\":\"}; id=${id%%\"*}; printf '{"request":"value","id":"%s","replica":0}\n' "$id"; IFS= read -r answer; printf '{"id":"%s","actions":[{"skip":{"reason":"%s"}}]}\n' "$id" "$(printf '%s' "$answer" | tr -d '"{}')"; done"#;
        let decisions = plugin(script)
            .decide_batch(std::slice::from_ref(&k), &values)
            .unwrap();
        assert_eq!(
            decisions,
            vec![vec![Action::Skip {
                reason: "error:cannot read the value: gone".into()
            }]]
        );
    }

    #[test]
    fn a_value_request_for_a_replica_without_a_value_is_an_error() {
        let k = key("a");
        for (replica, expected) in [
            (2, "replica 2 (g3n1), which holds no live healthy value"),
            (5, "value request for replica 5, but the key has 3"),
        ] {
            let policy = plugin(&format!(
                r#"read -r header; IFS= read -r line; id=${{line#*\"id\":\"}}; id=${{id%%\"*}}; printf '{{"request":"value","id":"%s","replica":{replica}}}\n' "$id"; read -r answer"#
            ));
            let err = policy
                .decide_batch(std::slice::from_ref(&k), &no_values())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("output line 1, key {}", k.id)),
                "{err}"
            );
            assert!(err.contains(expected), "{err}");
        }
    }

    /// `parse_line` is what the fuzz target `plugin_decisions` drives; this pins its
    /// answers for the documented forms without a plugin process.
    #[test]
    fn parse_line_checks_a_line_without_running_a_plugin() {
        let k = key("a");
        let line = format!(
            r#"{{"id":"{}","actions":[{{"copy":{{"from":2,"to":[0]}}}}]}}"#,
            k.id
        );
        // Replica 2 holds nothing to copy.
        let err = parse_line(&k, line.as_bytes()).unwrap_err();
        assert!(err.starts_with("decision refused"), "{err}");
        let line = format!(
            r#"{{"id":"{}","actions":[{{"merge":{{"sources":[0,1],"to":[2],"value_hex":"6869"}}}}]}}"#,
            k.id
        );
        assert_eq!(
            parse_line(&k, line.as_bytes()),
            Ok(PluginLine::Decision {
                actions: vec![Action::Merge {
                    sources: vec![0, 1],
                    to: vec![2],
                }],
                value: Some(b"hi".to_vec()),
            })
        );
        let line = format!(r#"{{"request":"value","id":"{}","replica":1}}"#, k.id);
        assert_eq!(
            parse_line(&k, line.as_bytes()),
            Ok(PluginLine::ValueRequest { replica: 1 })
        );
        let err = parse_line(&k, b"\xff{").unwrap_err();
        assert!(err.starts_with("not a JSON object"), "{err}");
        assert!(err.contains("the line: \"\u{fffd}{\""), "{err}");
    }

    #[test]
    fn a_plugin_that_cannot_start_or_says_nothing_for_no_keys() {
        // No keys: the plugin is not even started.
        assert_eq!(
            plugin("exit 1").decide_batch(&[], &no_values()).unwrap(),
            Vec::<Vec<Action>>::new()
        );
        let err = error_of(&plugin("/nonexistent/plugin"), &[key("a")]);
        assert!(err.contains("exited with exit status: 127"), "{err}");
    }
}
