//! Fuzz the receiver's first line of defence: `protocol::Reader` on arbitrary
//! bytes, exactly as `serve` meets them on stdin.
//!
//! Invariants checked (a panic, a hang or unbounded memory is a finding):
//! - every input ends in a message or a `ProtocolError`, never a panic;
//! - at most `max_frames` messages are returned, whatever the input;
//! - a frame's body is never allocated past the tag's limit (libFuzzer's
//!   `-rss_limit_mb` / `-malloc_limit_mb` catch a length trusted too early);
//! - every message that parses re-encodes and parses back to itself.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use certsync_core::protocol::{encode, Limits, Message, Reader};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

fn limits() -> Limits {
    Limits {
        // A slice never stalls; keep the bound short anyway so a reader
        // that waited on a complete input would show up as a timeout.
        frame_timeout: Duration::from_millis(100),
        ..Limits::default()
    }
}

async fn read_all(data: &[u8]) -> Vec<Message> {
    let mut reader = Reader::new(data, limits());
    let mut out = Vec::new();
    while let Ok(msg) = reader.next("message").await {
        out.push(msg);
        assert!(out.len() <= limits().max_frames, "frame limit not enforced");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let msgs = read_all(data).await;
        for msg in msgs {
            let bytes = encode(&msg).expect("a message that parsed re-encodes");
            let again = read_all(&bytes).await;
            assert_eq!(
                again.len(),
                1,
                "re-encoded {} did not read back",
                msg.kind()
            );
            assert_eq!(again[0], msg, "round trip changed a {}", msg.kind());
        }
    });
});
