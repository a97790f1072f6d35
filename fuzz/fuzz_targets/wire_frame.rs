//! The wire frame decoder (`engine/src/wire.rs`) on untrusted bytes, as a node reads a
//! request and a client reads a response.
//!
//! Properties, for `Request` and `Response` alike:
//! - decoding never panics, and never holds more heap than [`decode_budget`];
//! - whatever decodes re-encodes within [`MAX_FRAME`] to a frame that decodes equal, and
//!   encoding is canonical from then on (encode ∘ decode ∘ encode = encode);
//! - `read_frame` over a stream of frames agrees with the length prefix and
//!   `decode_payload`: a clean end is `None`, a short frame is `Truncated`, an announced
//!   length over the limit is `FrameTooLarge` (before allocating), and what it returns is
//!   exactly the payload's decoding.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use mend_engine::wire::{self, Request, Response, WireError, MAX_FRAME};
use mend_fuzz::{peak_during, ready};

/// The most heap decoding `len` bytes may hold. bincode's limit is a budget of in-memory
/// bytes that a container claims before it is allocated and gives back element by element
/// as they are decoded, so what is live at once is at most the frame limit (the containers
/// being filled) plus what the elements already decoded take, and each of those came from
/// bytes present in the input (none expands more than 16-fold: `(u64, u64)` from two
/// one-byte varints); and room for small allocations and an error message.
fn decode_budget(len: usize) -> usize {
    MAX_FRAME + 16 * len + (64 << 10)
}

fuzz_target!(|data: &[u8]| {
    check::<Request>(data);
    check::<Response>(data);
});

trait Message: bincode::Encode + bincode::Decode<()> + PartialEq + Debug {}
impl<T: bincode::Encode + bincode::Decode<()> + PartialEq + Debug> Message for T {}

fn check<T: Message>(data: &[u8]) {
    let (decoded, peak) = peak_during(|| wire::decode_payload::<T>(data));
    assert!(
        peak <= decode_budget(data.len()),
        "decoding {} bytes held {peak} bytes of heap",
        data.len()
    );
    if let Ok(msg) = &decoded {
        round_trip(msg);
    }
    read_stream::<T>(data);
}

fn round_trip<T: Message>(msg: &T) {
    let frame = wire::encode_frame(msg).expect("a message that decoded encodes");
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4, "the length prefix is the payload's");
    assert!(len <= MAX_FRAME);
    let back: T = wire::decode_payload(&frame[4..]).expect("an encoded frame decodes");
    assert_eq!(&back, msg, "decode(encode(m)) != m");
    let again = wire::encode_frame(&back).unwrap();
    assert_eq!(again, frame, "encoding is not canonical after one decode");
}

/// Reads `data` as a stream of frames until it ends or fails, checking each outcome
/// against the bytes.
fn read_stream<T: Message>(data: &[u8]) {
    let mut rest = data;
    loop {
        let before = rest;
        let (got, peak) = peak_during(|| ready(wire::read_frame::<_, T>(&mut rest)));
        // The payload buffer (at most MAX_FRAME) and its decoding.
        let budget = MAX_FRAME + decode_budget(before.len());
        assert!(peak <= budget, "reading a frame held {peak} bytes");
        let announced = before
            .get(..4)
            .map(|p| u32::from_be_bytes(p.try_into().unwrap()) as usize);
        match got {
            Ok(None) => {
                assert!(before.is_empty(), "a clean end with bytes left");
                return;
            }
            Ok(Some(msg)) => {
                let len = announced.expect("a frame has a length prefix");
                assert!(len <= MAX_FRAME);
                let payload = &before[4..4 + len];
                assert_eq!(rest, &before[4 + len..], "read past its frame");
                let direct: T = wire::decode_payload(payload).expect("the same payload decodes");
                assert_eq!(msg, direct);
            }
            Err(WireError::FrameTooLarge { len, max }) => {
                assert_eq!(Some(len), announced);
                assert!(len > max);
                return;
            }
            Err(WireError::Truncated) => {
                assert!(
                    before.len() < 4 || before.len() - 4 < announced.unwrap(),
                    "Truncated with the whole frame there"
                );
                return;
            }
            Err(WireError::Decode(_)) => {
                let len = announced.unwrap();
                assert!(wire::decode_payload::<T>(&before[4..4 + len]).is_err());
                return;
            }
            Err(e) => panic!("reading from memory failed with {e:?}"),
        }
    }
}
