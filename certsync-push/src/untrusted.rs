//! What a receiver says, made safe to show.
//!
//! Everything the far side writes is data from a host we do not control:
//! its progress lines, its error frame, its answer's messages, its
//! report's step messages, warnings, records to publish and names, its
//! agent string, its stderr. Before
//! any of it reaches our log (the journal, a terminal running `push`), it
//! goes through [`clean`] and, for the open-ended streams, a [`LogBudget`].
//!
//! Invariants:
//! - A shown string holds no control character: no newline or carriage
//!   return (a receiver cannot forge a log line of ours), no ESC, no C1
//!   control (no terminal escape sequences: colours, titles, cursor moves,
//!   cleared screens), no bidi override. ANSI sequences are removed whole,
//!   so no `[31m` debris is left behind.
//! - A shown string is at most [`MAX_SHOWN_CHARS`] characters.
//! - One session logs at most [`MAX_SESSION_LINES`] lines and
//!   [`MAX_SESSION_BYTES`] bytes of each of the receiver's streams
//!   (protocol progress lines, SSH stderr); past that, one line says the
//!   rest was dropped.

use certsync_core::protocol::{Decision, Want};
use certsync_core::report::Report;

/// Longest receiver-supplied string we show, in characters.
pub const MAX_SHOWN_CHARS: usize = 1024;
/// Most receiver lines one session may add to our log, per stream.
pub const MAX_SESSION_LINES: usize = 200;
/// Most bytes of receiver lines one session may add to our log, per stream.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;

/// `s` without control characters, ANSI escape sequences or bidi
/// overrides, whitespace controls (newline, tab, …) turned into one space,
/// cut at [`MAX_SHOWN_CHARS`] with `…`.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_SHOWN_CHARS * 4));
    let mut shown = 0usize;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if shown >= MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        match c {
            // ESC: drop the whole sequence. CSI (`ESC [` … final byte
            // 0x40–0x7e), OSC/DCS/… (`ESC ]` … BEL or ST), or ESC + one
            // character.
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                _ => {}
            },
            // The C1 forms of CSI and OSC.
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if c.is_whitespace() && c != ' ' => {
                if !out.ends_with(' ') {
                    out.push(' ');
                    shown += 1;
                }
            }
            c if c.is_control() || is_bidi_control(c) => {}
            c => {
                out.push(c);
                shown += 1;
            }
        }
    }
    out
}

fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) {
            break;
        }
    }
}

/// An OSC/DCS-style string, ended by BEL, ST (`ESC \`) or C1 ST.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => break,
            '\u{1b}' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                break;
            }
            _ => {}
        }
    }
}

/// Characters that reorder what a terminal shows (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// [`clean`] every string of a receiver's answer in place.
pub fn clean_want(want: &mut Want) {
    for d in &mut want.certs {
        clean_decision(d);
    }
}

fn clean_decision(d: &mut Decision) {
    d.name = clean(&d.name);
    d.message = clean(&d.message);
}

/// [`clean`] every string of a receiver's report in place.
pub fn clean_report(report: &mut Report) {
    for c in &mut report.certs {
        c.name = clean(&c.name);
        for s in &mut c.steps {
            s.message = clean(&s.message);
            s.subject = s.subject.as_deref().map(clean);
        }
        for w in c.warnings.iter_mut().chain(c.publish.iter_mut()) {
            *w = clean(w);
        }
    }
}

/// How much of one receiver stream this session still logs.
#[derive(Debug)]
pub struct LogBudget {
    lines: usize,
    bytes: usize,
    exhausted: bool,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            lines: MAX_SESSION_LINES,
            bytes: MAX_SESSION_BYTES,
            exhausted: false,
        }
    }
}

/// What to do with one more line.
#[derive(Debug, PartialEq, Eq)]
pub enum Allow {
    /// Log it (already cleaned).
    Show(String),
    /// The budget just ran out: log this notice instead, once.
    Notice(String),
    /// Drop it silently: the notice was given.
    Drop,
}

impl LogBudget {
    /// Clean `line` and charge it to the budget.
    pub fn take(&mut self, line: &str) -> Allow {
        if self.exhausted {
            return Allow::Drop;
        }
        let shown = clean(line);
        if self.lines == 0 || shown.len() > self.bytes {
            self.exhausted = true;
            return Allow::Notice(format!(
                "the receiver said more than this session may log ({MAX_SESSION_LINES} lines or {} KiB); the rest is dropped here (the receiving host's journal has it)",
                MAX_SESSION_BYTES / 1024
            ));
        }
        self.lines -= 1;
        self.bytes -= shown.len();
        Allow::Show(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_line_breaks_are_removed_whole() {
        assert_eq!(clean("plain text: ok"), "plain text: ok");
        assert_eq!(clean("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(clean("a\nFAKE line\r\nb"), "a FAKE line b");
        assert_eq!(clean("\u{1b}]0;title\u{7}x"), "x");
        assert_eq!(clean("\u{1b}]8;;http://e\u{1b}\\link"), "link");
        assert_eq!(clean("\u{9b}2Jcleared"), "cleared");
        assert_eq!(clean("del\u{7f}\u{0}bell\u{7}"), "delbell");
        assert_eq!(clean("abc\u{202e}fed"), "abcfed");
        assert_eq!(clean("naïve ✓"), "naïve ✓");
        let long = clean(&"A".repeat(10 * MAX_SHOWN_CHARS));
        assert_eq!(long.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn a_reports_warnings_and_records_to_publish_are_cleaned_too() {
        let mut c = certsync_core::report::CertReport::new("mail", None);
        c.warn("w\n2026-01-01 INFO forged\u{1b}[2J");
        c.publish = vec!["_25._tcp.mail.example.com. IN TLSA 3 1 1 ab\r\n\u{1b}]0;t\u{7}".into()];
        let mut r = Report {
            dry_run: false,
            certs: vec![c],
        };
        clean_report(&mut r);
        assert_eq!(r.certs[0].warnings, ["w 2026-01-01 INFO forged"]);
        assert_eq!(
            r.certs[0].publish,
            ["_25._tcp.mail.example.com. IN TLSA 3 1 1 ab "]
        );
    }

    #[test]
    fn the_budget_gives_one_notice_then_drops() {
        let mut b = LogBudget::default();
        for _ in 0..MAX_SESSION_LINES {
            assert!(matches!(b.take("x"), Allow::Show(_)));
        }
        assert!(matches!(b.take("x"), Allow::Notice(_)));
        assert_eq!(b.take("x"), Allow::Drop);

        let mut b = LogBudget::default();
        let big = "B".repeat(MAX_SHOWN_CHARS * 10);
        let mut shown = 0;
        loop {
            match b.take(&big) {
                Allow::Show(s) => shown += s.len(),
                Allow::Notice(_) => break,
                Allow::Drop => unreachable!(),
            }
        }
        assert!(shown <= MAX_SESSION_BYTES, "{shown}");
    }
}
