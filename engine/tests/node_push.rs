//! `Request::Push`: a node copies versions it holds straight to another node, as one write
//! batch. Only exactly the versions asked for, only healthy ones, only to a node of the
//! route list; a destination that cannot be reached is an error naming both nodes.

mod support;

use std::sync::Arc;

use mend_engine::node;
use mend_engine::store::{MemoryStore, PutItem, PutOutcome, Store};
use mend_engine::transport::Peer;
use mend_engine::wire::{self, ErrorKind, PushOutcome, Request, Response};
use mend_engine::{Id, Version};

struct Pair {
    _dir: tempfile::TempDir,
    a: Arc<MemoryStore>,
    b: Arc<MemoryStore>,
    _node_a: node::RunningNode,
    node_b: Option<node::RunningNode>,
    to_a: Peer,
}

/// Nodes `a` (group 1) and `b` (group 2), each owning every partition, and a client
/// connected to `a`.
async fn pair() -> Pair {
    let (dir, mut nodes) = support::start_nodes("push", &[("a", 1), ("b", 2)]).await;
    let (b, node_b) = nodes.pop().unwrap();
    let (a, node_a) = nodes.pop().unwrap();
    let to_a = support::connect(dir.path(), node_a.addr).await;
    Pair {
        _dir: dir,
        a,
        b,
        _node_a: node_a,
        node_b: Some(node_b),
        to_a,
    }
}

fn put(store: &MemoryStore, key: &str, value: &[u8], ts: u64) -> (Id, Version) {
    let id = Id::from_key(key.as_bytes());
    let version = Version::of_value(value, ts, 0);
    let outcome = store.put_batch(&[PutItem { id, version, value }]).unwrap();
    assert_eq!(outcome, vec![PutOutcome::Written]);
    (id, version)
}

async fn push(
    p: &Pair,
    to: &str,
    items: Vec<(Id, Version)>,
) -> Result<(Vec<PushOutcome>, u64), String> {
    match p
        .to_a
        .call(&Request::Push {
            to: to.into(),
            items: items
                .iter()
                .map(|(id, v)| (*id, wire::version_digest(id, v)))
                .collect(),
        })
        .await
    {
        Ok(Response::Pushed { outcomes, bytes }) => Ok((outcomes, bytes)),
        Ok(other) => panic!("unexpected answer {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn a_push_copies_exactly_the_versions_held_and_healthy() {
    let p = pair().await;
    let (k1, v1) = put(&p.a, "k1", b"one", 10);
    let (k2, v2) = put(&p.a, "k2", &vec![7u8; 300_000], 10);
    let tomb = Version::tombstone(11);
    let k3 = Id::from_key(b"k3");
    p.a.put_batch(&[PutItem {
        id: k3,
        version: tomb,
        value: &[],
    }])
    .unwrap();
    // A version `a` does not hold, and a key it does not have at all.
    let (k4, _) = put(&p.a, "k4", b"newer", 20);
    let older = Version::of_value(b"older", 5, 0);
    let k5 = Id::from_key(b"k5");
    // A corrupt copy.
    let (k6, v6) = put(&p.a, "k6", b"rotten", 10);
    assert!(p.a.mark_corrupt(&k6, &v6).unwrap());

    let items = vec![
        (k1, v1),
        (k2, v2),
        (k3, tomb),
        (k4, older),
        (k5, v1),
        (k6, v6),
    ];
    let (outcomes, bytes) = push(&p, "b", items).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            PushOutcome::Put(PutOutcome::Written),
            PushOutcome::Put(PutOutcome::Written),
            PushOutcome::Put(PutOutcome::Written),
            PushOutcome::SourceChanged,
            PushOutcome::SourceChanged,
            PushOutcome::Corrupt,
        ]
    );
    assert!(bytes > 300_003, "{bytes} bytes for 300,003 value bytes");
    assert_eq!(p.b.lookup(&k1).unwrap().unwrap().version, v1);
    assert_eq!(p.b.lookup(&k2).unwrap().unwrap().version, v2);
    assert_eq!(p.b.lookup(&k3).unwrap().unwrap().version, tomb);
    for absent in [k4, k5, k6] {
        assert_eq!(p.b.lookup(&absent).unwrap(), None);
    }

    // Again: the destination holds them now.
    let (outcomes, _) = push(&p, "b", vec![(k1, v1)]).await.unwrap();
    assert!(
        matches!(outcomes[..], [PushOutcome::Put(PutOutcome::Stale { .. })]),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn bad_pushes_are_refused_and_change_nothing() {
    let mut p = pair().await;
    let (k1, v1) = put(&p.a, "k1", b"one", 10);
    let expect = |r: Result<(Vec<PushOutcome>, u64), String>, what: &str| {
        let e = r.expect_err(what);
        assert!(e.contains(what), "{e}");
    };
    expect(push(&p, "nobody", vec![(k1, v1)]).await, "nobody");
    expect(push(&p, "a", vec![(k1, v1)]).await, "cannot push to itself");
    expect(
        push(&p, "b", vec![(k1, v1); wire::MAX_PUSH_ITEMS + 1]).await,
        "items in one push",
    );
    // A value over the push limit is not read, let alone sent.
    let big = vec![1u8; wire::MAX_PUSH_VALUE as usize + 1];
    let (k2, v2) = put(&p.a, "k2", &big, 10);
    let (outcomes, bytes) = push(&p, "b", vec![(k2, v2)]).await.unwrap();
    assert_eq!((outcomes, bytes), (vec![PushOutcome::TooLarge], 0));
    assert_eq!(p.b.lookup(&k2).unwrap(), None);
    assert_eq!(p.b.lookup(&k1).unwrap(), None);

    // A destination that is gone: an error naming both nodes, of kind Unreachable.
    p.node_b.take().unwrap().shutdown().await;
    let err = p
        .to_a
        .call(&Request::Push {
            to: "b".into(),
            items: vec![(k1, wire::version_digest(&k1, &v1))],
        })
        .await
        .unwrap_err();
    match err {
        mend_engine::transport::TransportError::Remote { source, .. } => {
            assert_eq!(source.kind, ErrorKind::Unreachable);
            assert!(
                source.message.contains("node a cannot push to node b"),
                "{source}"
            );
        }
        other => panic!("{other}"),
    }
}
