//! A hostile receiver for the pusher's tests, reached with
//! `transport = "local"`: a `sh` script that writes frames prepared by the
//! test to the pusher, optionally something to stderr, and then stalls,
//! drips, or waits for the pusher to close.
//!
//! The script never reads what the pusher sends. A test whose fake answers
//! `have` for every name gets no key material sent to it; one that stalls
//! before its answer gets none either.

use std::path::PathBuf;

use certsync_core::protocol::{self, Decision, Hello, Message, Want, Wanted};
use certsync_core::report::Report;
use tempfile::TempDir;

/// What the fake does after its prepared frames.
#[derive(Debug, Clone)]
pub enum Then {
    /// Read (and discard) stdin until the pusher closes it, then exit 0.
    WaitForEof,
    /// Never write again, never read, never exit (until killed).
    Stall,
    /// Write `frame` every `every_secs` seconds, forever: a receiver that
    /// looks alive to a per-frame timeout.
    DripFrames { frame: Message, every_secs: u32 },
    /// Start a frame and send one byte of it every `every_secs` seconds.
    DripBytes { every_secs: u32 },
}

/// A prepared fake receiver; its files live as long as this value.
pub struct FakeReceiver {
    dir: TempDir,
    then: Then,
}

/// The fake's hello.
pub fn hello() -> Message {
    Message::Hello(Hello::new("fake-receiver", false, false))
}

/// An answer saying "have" for each of `names`.
pub fn want_have(names: &[&str], message: &str) -> Message {
    Message::Want(Want {
        certs: names
            .iter()
            .map(|n| Decision {
                name: n.to_string(),
                wanted: Wanted::Have,
                message: message.to_string(),
                installed: None,
            })
            .collect(),
    })
}

/// A frame with `tag` and `body` as is (`tag`: 1 hello … 8 error).
pub fn raw_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Frames as bytes (test input: panics on failure).
pub fn encode_all(frames: &[Message]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|m| protocol::encode(m).expect("encode").to_vec())
        .collect()
}

impl FakeReceiver {
    /// A fake that writes `frames` (and `stderr` to its stderr), then does
    /// `then`.
    pub fn new(frames: &[Message], stderr: &[u8], then: Then) -> FakeReceiver {
        FakeReceiver::raw(&encode_all(frames), stderr, then)
    }

    /// As [`FakeReceiver::new`], with frames as raw bytes (for frames the
    /// encoder would not write).
    pub fn raw(frames: &[u8], stderr: &[u8], then: Then) -> FakeReceiver {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("frames"), frames).expect("frames");
        std::fs::write(dir.path().join("stderr"), stderr).expect("stderr");
        let drip = match &then {
            Then::DripFrames { frame, .. } => encode_all(std::slice::from_ref(frame)),
            // A log frame announcing 100 bytes, never finished.
            _ => {
                let mut start = vec![6u8];
                start.extend_from_slice(&100u32.to_be_bytes());
                start
            }
        };
        std::fs::write(dir.path().join("drip"), drip).expect("drip");
        FakeReceiver { dir, then }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `sh -c` script; `$0` is the fake's dir. It records its pid
    /// (`exec` keeps that pid for the stall, so the pusher's kill ends it).
    fn script(&self) -> String {
        let after = match &self.then {
            Then::WaitForEof => "exec cat >/dev/null".to_string(),
            Then::Stall => "exec sleep 3600".to_string(),
            Then::DripFrames { every_secs, .. } => {
                format!("while :; do cat \"$0/drip\"; sleep {every_secs}; done")
            }
            Then::DripBytes { every_secs } => {
                format!("cat \"$0/drip\"; while :; do printf x; sleep {every_secs}; done")
            }
        };
        format!("echo $$ >\"$0/pid\"; cat \"$0/stderr\" >&2; cat \"$0/frames\"; {after}")
    }

    /// A command line that runs this fake, for an sshd forced command (no
    /// double quotes): `/bin/sh <dir>/fake.sh`.
    pub fn command_line(&self) -> String {
        let dir = self.dir.path().display().to_string();
        assert!(!dir.contains(['\'', '"', ' ']), "{dir}");
        let body = self.script().replace("$0", &dir);
        let path = self.file("fake.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("fake.sh");
        format!("/bin/sh {}", path.display())
    }

    /// `[[target]] name = …` running this fake.
    pub fn target(&self, name: &str) -> String {
        format!(
            "[[target]]\nname = {name:?}\ntransport = \"local\"\ncommand = [\"sh\", \"-c\", {:?}, {:?}]\n",
            self.script(),
            self.dir.path().display().to_string(),
        )
    }

    /// The pid of the last run of this fake, once it started.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.file("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Is the last run of this fake still running (not gone, not a
    /// zombie)?
    pub fn running(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the parenthesised command name.
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    /// As [`FakeReceiver::target`], with more `[[target]]` keys.
    pub fn target_with(&self, name: &str, extra: &str) -> String {
        format!("{}{extra}\n", self.target(name))
    }
}

/// A report saying "nothing to do" for `name`, with one step `message`.
pub fn report_nothing_to_do(name: &str, message: &str) -> Message {
    let mut cert = certsync_core::report::CertReport::new(name, None);
    cert.nothing_to_do = true;
    cert.done(certsync_core::report::Step::Compare, message);
    Message::Report(Report {
        dry_run: false,
        certs: vec![cert],
    })
}
