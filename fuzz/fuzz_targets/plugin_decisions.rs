//! The exec plugin's answer parser (`policies/src/exec.rs`, `parse_line`) on arbitrary
//! lines, against an arbitrary key.
//!
//! Input: byte 0 picks the number of replicas (0 to 5), the next two bytes per replica its
//! state (absent, live, tombstone or corrupt; mergeable; proper) and timestamp; the rest is
//! the line the plugin wrote. The key's id is always [`key_id`], so that seeds and the
//! fuzzer's dictionary can hold it.
//!
//! Properties:
//! - it never panics;
//! - a value request it accepts names a replica holding a live healthy value;
//! - a decision it accepts passes the engine's `validate`, and a merged value comes with
//!   a merge and within `MAX_VALUE_BYTES`;
//! - an accepted decision, written back in the documented form, parses to the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mend_engine::policy::{validate, Action, KeyState, Replica};
use mend_engine::{Id, Record, Version};
use mend_policies::exec::{parse_line, PluginLine};
use mend_policies::MAX_VALUE_BYTES;
use serde_json::{json, Value};

// Links the heap meter, whose hard limit makes an allocation bomb a crash.
extern crate mend_fuzz;

/// The id of every fuzzed key: the key `fuzz`.
fn key_id() -> Id {
    Id::from_key(b"fuzz")
}

fuzz_target!(|data: &[u8]| {
    let (key, line) = key_and_line(data);
    match parse_line(&key, line) {
        Err(why) => assert!(!why.is_empty()),
        Ok(PluginLine::ValueRequest { replica }) => {
            let r = &key.replicas[replica];
            assert!(
                r.healthy().is_some_and(|v| !v.is_tombstone()),
                "a value request for replica {replica} without a live healthy value passed"
            );
        }
        Ok(PluginLine::Decision { actions, value }) => {
            validate(&key, &actions).expect("an accepted decision is valid");
            if let Some(value) = &value {
                assert!(value.len() as u64 <= MAX_VALUE_BYTES);
                assert!(actions.iter().any(|a| matches!(a, Action::Merge { .. })));
            }
            let line = render(&key, &actions, value.as_deref());
            let back = parse_line(&key, line.as_bytes()).expect("a rendered decision parses");
            assert_eq!(back, PluginLine::Decision { actions, value });
        }
    }
});

fn key_and_line(data: &[u8]) -> (KeyState, &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0) % 6);
    let take = (1 + 2 * n).min(data.len());
    let spec = &data[..take];
    let byte = |i: usize| spec.get(i).copied().unwrap_or(0);
    let replicas = (0..n)
        .map(|i| {
            let (state, timestamp) = (byte(1 + 2 * i), byte(2 + 2 * i));
            let mut version = match state & 3 {
                0 => None,
                2 => Some(Version::tombstone(u64::from(timestamp))),
                _ => Some(Version::of_value(&[timestamp], u64::from(timestamp), 0)),
            };
            if let Some(v) = version.as_mut().filter(|_| state & 4 != 0) {
                v.flags |= mend_engine::version::FLAG_MERGEABLE;
            }
            Replica {
                group: i as u32 + 1,
                node: format!("g{}n1", i + 1),
                proper: state & 8 == 0,
                record: version.map(|version| Record {
                    version,
                    corrupt: state & 3 == 3,
                }),
            }
        })
        .collect();
    let key = KeyState {
        id: key_id(),
        replicas,
    };
    (key, &data[take..])
}

/// `actions` as a decision line in the documented form, `value` on the first merge.
fn render(key: &KeyState, actions: &[Action], value: Option<&[u8]>) -> String {
    let mut value = value.map(to_hex);
    let actions: Vec<Value> = actions
        .iter()
        .map(|a| match a {
            Action::Copy { from, to } => json!({"copy": {"from": from, "to": to}}),
            Action::Remove { on, keep } => json!({"remove": {"on": on, "keep": keep}}),
            Action::Merge { sources, to } => match value.take() {
                Some(hex) => {
                    json!({"merge": {"sources": sources, "to": to, "value_hex": hex}})
                }
                None => json!({"merge": {"sources": sources, "to": to}}),
            },
            Action::Skip { reason } => json!({"skip": {"reason": reason}}),
            Action::Unrecoverable { reason } => json!({"unrecoverable": {"reason": reason}}),
        })
        .collect();
    json!({"id": key.id.to_hex(), "actions": actions}).to_string()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
