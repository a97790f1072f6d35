//! A node faced with hostile frames: garbage, oversized length prefixes, and streams that
//! stall mid-frame. Each ends its own stream with an error; the node keeps serving, also
//! when stalled streams hold every request slot it has.

mod support;

use std::time::Duration;

use mend_engine::node::{NodeOptions, MAX_IN_FLIGHT};
use mend_engine::reconcile::{CompareAsk, Located, Width};
use mend_engine::transport::Peer;
use mend_engine::wire::{self, ErrorKind, Request, Response};
use mend_engine::{Id, Version};

/// Sends raw bytes on a new stream and returns the node's answer.
async fn raw(peer: &Peer, bytes: &[u8]) -> Option<Response> {
    let (mut send, mut recv) = peer.conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    wire::read_frame::<_, Response>(&mut recv).await.unwrap()
}

fn is_protocol_error(r: &Option<Response>) -> bool {
    matches!(r, Some(Response::Error(e)) if e.kind == ErrorKind::Protocol)
}

#[tokio::test]
async fn garbage_and_oversized_frames_end_their_stream_and_the_node_serves_on() {
    let (dir, node) = support::one_node("hostile").await;
    let hostile = support::connect(dir.path(), node.addr).await;
    let honest = support::connect(dir.path(), node.addr).await;

    // A stream that announces a frame and then stalls: the node waits on it alone.
    let (mut stalled, _stalled_recv) = hostile.conn.open_bi().await.unwrap();
    stalled.write_all(&1000u32.to_be_bytes()).await.unwrap();
    stalled.write_all(&[1, 2, 3]).await.unwrap();

    // Garbage after a valid length.
    let mut garbage = 7u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff]);
    let answer = raw(&hostile, &garbage).await;
    assert!(is_protocol_error(&answer), "{answer:?}");

    // A length prefix over the limit: refused before anything is allocated.
    let answer = raw(&hostile, &u32::MAX.to_be_bytes()).await;
    match &answer {
        Some(Response::Error(e)) => assert!(e.message.contains("exceeds the limit"), "{e:?}"),
        other => panic!("{other:?}"),
    }

    // A frame cut short.
    let answer = raw(&hostile, &50u32.to_be_bytes()).await;
    assert!(is_protocol_error(&answer), "{answer:?}");

    // A valid frame whose vector length claims more than the frame holds.
    let mut lying = vec![2u8, 0xfd];
    lying.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut framed = (lying.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&lying);
    let answer = raw(&hostile, &framed).await;
    assert!(is_protocol_error(&answer), "{answer:?}");

    // Meanwhile an honest client is served, and so is the hostile connection itself.
    let id = Id::from_key(b"k");
    let version = Version::of_value(b"v", 1, 0);
    let (mut send, mut recv) = honest.open(&Request::Write { id, version }).await.unwrap();
    send.write_all(b"v").await.unwrap();
    let _ = send.finish();
    assert!(matches!(
        honest.next(&mut recv).await.unwrap(),
        Some(Response::Written(_))
    ));
    match hostile
        .call(&Request::Lookup { ids: vec![id] })
        .await
        .unwrap()
    {
        Response::Records(r) => assert_eq!(r[0].unwrap().version, version),
        other => panic!("{other:?}"),
    }
    drop(stalled);
    node.shutdown().await;
}

#[tokio::test]
async fn a_second_hello_and_out_of_bounds_requests_are_refused() {
    let (dir, node) = support::one_node("hostile").await;
    let peer = support::connect(dir.path(), node.addr).await;
    let again = peer
        .call(&Request::Hello {
            protocol: wire::PROTOCOL_VERSION,
        })
        .await;
    assert!(again.is_err());
    let too_many = peer
        .call(&Request::Lookup {
            ids: vec![Id::MIN; wire::MAX_LOOKUP + 1],
        })
        .await;
    assert!(too_many.unwrap_err().to_string().contains("at most"));
    let too_split = peer
        .call(&Request::Fingerprints {
            ranges: vec![mend_engine::IdRange::ALL; 2],
            split: u16::MAX,
        })
        .await;
    assert!(too_split.is_err());
    let too_wide = peer
        .call(&Request::Fingerprints {
            ranges: vec![mend_engine::IdRange::ALL; 3],
            split: 1,
        })
        .await;
    let refused = too_wide.unwrap_err().to_string();
    assert!(refused.contains("more than twice"), "{refused}");
    // Comparison asks off the tree of ranges, or over the budget, name what is wrong.
    let compare = |asks: Vec<CompareAsk>| Request::Compare {
        tops: vec![mend_engine::IdRange::ALL],
        split: 8,
        asks,
    };
    let at = |top: u16, path: Vec<u8>| Located { top, path };
    for (asks, says) in [
        (vec![CompareAsk::Whole(at(1, vec![]))], "top range 1 of 1"),
        (
            vec![CompareAsk::Sums(at(0, vec![2, 9]))],
            "part 9 of a range split 8",
        ),
        (
            vec![CompareAsk::Hashes(at(0, vec![1, 200]), Width::Full)],
            "part 200 of a range split 8",
        ),
        (
            vec![CompareAsk::Whole(at(0, vec![])); 3],
            "spanning the id space more than twice",
        ),
        (
            vec![CompareAsk::Fingerprints(at(0, vec![])); wire::COMPARE_BUDGET / 8 + 1],
            "at most",
        ),
    ] {
        let refused = peer.call(&compare(asks)).await.unwrap_err().to_string();
        assert!(refused.contains(says), "{refused}");
    }
    // Still served.
    assert!(matches!(
        peer.call(&Request::RouteList).await.unwrap(),
        Response::RouteList(_)
    ));
    node.shutdown().await;
}

#[tokio::test]
async fn streams_stalled_mid_frame_are_reset_so_they_cannot_hold_every_request_slot() {
    let options = NodeOptions {
        request_read_timeout: Duration::from_millis(300),
    };
    let (dir, mut nodes) = support::start_nodes_with("stall", &[("g1n1", 1)], options).await;
    let (_, node) = nodes.pop().unwrap();
    let hostile = support::connect(dir.path(), node.addr).await;
    let honest = support::connect(dir.path(), node.addr).await;

    // More streams than the node has request slots, each announcing a frame it never sends.
    let mut stalled = Vec::new();
    for _ in 0..MAX_IN_FLIGHT + 8 {
        let (mut send, recv) = hostile.conn.open_bi().await.unwrap();
        send.write_all(&1000u32.to_be_bytes()).await.unwrap();
        stalled.push((send, recv));
    }
    let id = Id::from_key(b"k");
    let served = tokio::spawn(async move { honest.call(&Request::Lookup { ids: vec![id] }).await });

    // Every stalled stream is reset by the node (without the time limit they would hold
    // their slots, and this would wait forever: the outer limit turns that into a failure).
    let resets = async {
        for (_send, mut recv) in stalled {
            let mut buf = [0u8; 16];
            match recv.read(&mut buf).await {
                Err(quinn::ReadError::Reset(_)) => {}
                other => panic!("a stalled stream got {other:?}, not a reset"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), resets)
        .await
        .expect("the node never reset the stalled streams");
    let answer = tokio::time::timeout(Duration::from_secs(60), served)
        .await
        .expect("the honest client was never served")
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, Response::Records(ref r) if r == &vec![None]),
        "{answer:?}"
    );
    node.shutdown().await;
}
