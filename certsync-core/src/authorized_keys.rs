//! The `authorized_keys` line that confines the pusher's SSH key to
//! certsync-receive.
//!
//! Both sides print it: `certsync-push keygen` right after making a key, and
//! `certsync-receive authorized-key --pubkey FILE [--from CIDR]` on the
//! receiving host. One function makes it, so the two can never disagree.
//!
//! The line is `command="…",restrict[,from="…"] TYPE BASE64 [comment]`:
//! `restrict` turns off every forwarding, the pty and `~/.ssh/rc`, and the
//! forced command runs whatever the client asked for (the client's request
//! lands in `SSH_ORIGINAL_COMMAND`, which certsync-receive logs and ignores).
//!
//! Invariant: nothing from the input can break out of its field. The key
//! must be a well-formed public key of a type we accept (its base64 decodes
//! and names the same type), the `from` list and the command may not
//! contain quotes, backslashes, whitespace where it would split a field, or
//! control characters, and the comment may not contain control characters
//! (a newline there would add a second, unrestricted line).

use thiserror::Error;

/// Key types accepted in the line. DSA is gone from OpenSSH; certificates
/// and security-key (`sk-`) types are out of scope for a machine key.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// Why an `authorized_keys` line could not be made. The messages speak of
/// the public key *line* and never echo the key data itself.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthorizedKeyError {
    #[error("the public key is empty: give the contents of the .pub file (\"ssh-ed25519 AAAA… comment\")")]
    Empty,
    #[error("the public key must be a single line \"TYPE BASE64 [comment]\", as in the .pub file written by `certsync-push keygen` or ssh-keygen")]
    NotOneLine,
    #[error("the public key line has no key data after the type {key_type:?}: expected \"TYPE BASE64 [comment]\"")]
    MissingData { key_type: String },
    #[error("unsupported public key type {key_type:?}: use one of {}", KEY_TYPES.join(", "))]
    UnsupportedType { key_type: String },
    #[error("the key data of the {key_type} public key is not valid base64: copy the .pub file again, whole")]
    BadBase64 { key_type: String },
    #[error("the key data does not belong to a {key_type} key (it names {found:?}): the .pub file is damaged or was edited")]
    TypeMismatch { key_type: String, found: String },
    #[error("the comment of the public key contains control characters: remove them")]
    BadComment,
    #[error("the from= list {from:?} is not valid: give comma-separated addresses, CIDRs or host patterns (letters, digits, . : - _ * ? /, a leading ! to negate), no spaces or quotes")]
    BadFrom { from: String },
    #[error("the forced command {command:?} cannot be written into authorized_keys: it must be non-empty and contain no quotes, backslashes or control characters")]
    BadCommand { command: String },
}

/// Make the restricted `authorized_keys` line for `pubkey_line`.
///
/// `pubkey_line` is the content of a `.pub` file (`TYPE BASE64 [comment]`;
/// surrounding whitespace and one trailing newline are fine). `from` is an
/// optional OpenSSH pattern list (`192.0.2.10,2001:db8::/32,!10.0.0.1`).
/// `command` is the forced command, usually `certsync-receive serve`.
pub fn authorized_keys_line(
    pubkey_line: &str,
    from: Option<&str>,
    command: &str,
) -> Result<String, AuthorizedKeyError> {
    let key = parse_public_key_line(pubkey_line)?;
    check_command(command)?;
    let mut options = format!("command=\"{command}\",restrict");
    if let Some(from) = from {
        check_from(from)?;
        options.push_str(&format!(",from=\"{from}\""));
    }
    let mut line = format!("{options} {} {}", key.key_type, key.base64);
    if !key.comment.is_empty() {
        line.push(' ');
        line.push_str(key.comment);
    }
    Ok(line)
}

/// A public key line taken apart; borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct PublicKeyLine<'a> {
    pub key_type: &'a str,
    pub base64: &'a str,
    pub comment: &'a str,
}

/// Parse and check `TYPE BASE64 [comment]`.
pub fn parse_public_key_line(line: &str) -> Result<PublicKeyLine<'_>, AuthorizedKeyError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(AuthorizedKeyError::Empty);
    }
    if line.contains(['\n', '\r']) {
        return Err(AuthorizedKeyError::NotOneLine);
    }
    let (key_type, rest) = split_field(line);
    if !KEY_TYPES.contains(&key_type) {
        return Err(AuthorizedKeyError::UnsupportedType {
            key_type: key_type.to_string(),
        });
    }
    let (base64, comment) = split_field(rest);
    if base64.is_empty() {
        return Err(AuthorizedKeyError::MissingData {
            key_type: key_type.to_string(),
        });
    }
    let blob = decode_base64(base64).ok_or_else(|| AuthorizedKeyError::BadBase64 {
        key_type: key_type.to_string(),
    })?;
    // The SSH wire encoding of a public key starts with its type as an
    // SSH string (u32 big-endian length, then the bytes).
    let found = blob_type(&blob).unwrap_or("");
    if found != key_type {
        return Err(AuthorizedKeyError::TypeMismatch {
            key_type: key_type.to_string(),
            found: String::from_utf8_lossy(found.as_bytes()).into_owned(),
        });
    }
    if comment.chars().any(char::is_control) {
        return Err(AuthorizedKeyError::BadComment);
    }
    Ok(PublicKeyLine {
        key_type,
        base64,
        comment,
    })
}

/// The first whitespace-separated field and the rest, trimmed.
fn split_field(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

fn blob_type(blob: &[u8]) -> Option<&str> {
    let len_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let name = blob.get(4..4usize.checked_add(len)?)?;
    std::str::from_utf8(name).ok()
}

fn check_command(command: &str) -> Result<(), AuthorizedKeyError> {
    let bad = command.trim().is_empty()
        || command
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control());
    if bad {
        return Err(AuthorizedKeyError::BadCommand {
            command: command.to_string(),
        });
    }
    Ok(())
}

/// OpenSSH's `from=` takes a comma-separated list of host name or address
/// patterns (with `*`, `?`) and CIDRs, each optionally negated with `!`.
/// We accept exactly those characters, so the value cannot close its quote.
fn check_from(from: &str) -> Result<(), AuthorizedKeyError> {
    let bad = || AuthorizedKeyError::BadFrom {
        from: from.to_string(),
    };
    if from.is_empty() {
        return Err(bad());
    }
    for entry in from.split(',') {
        let pattern = entry.strip_prefix('!').unwrap_or(entry);
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '*' | '?');
        match pattern.split_once('/') {
            Some((addr, bits)) => {
                // A CIDR: an address (no wildcards) and a prefix length.
                let addr_ok = !addr.is_empty()
                    && addr
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':');
                let bits_ok = !bits.is_empty()
                    && bits.len() <= 3
                    && bits.chars().all(|c| c.is_ascii_digit())
                    && bits.parse::<u8>().is_ok_and(|b| b <= 128);
                if !addr_ok || !bits_ok {
                    return Err(bad());
                }
            }
            None => {
                if pattern.is_empty() || !pattern.chars().all(allowed) {
                    return Err(bad());
                }
            }
        }
    }
    Ok(())
}

/// Standard base64 (RFC 4648, `+/`, `=` padding required to a multiple of
/// four), as OpenSSH writes it. Returns `None` on any deviation.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.chunks_exact(4);
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i != last) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real keys made with ssh-keygen (public halves only).
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIlD+0kDuV0pczfofkp5bfOsXiNcovkcGcJuIxqfd54L certsync@npm";
    const ECDSA256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHVttsbsptnkOKb3Orq951tcjLZ+cfUV1y7Hysxsa67U+YMAT3pNajtnuVUZzOJiXmsM88XHJ4vJQuaIIAnku/c=";

    #[test]
    fn ed25519_line_with_comment() {
        let line = authorized_keys_line(ED25519, None, crate::contract::FORCED_COMMAND).unwrap();
        assert_eq!(
            line,
            "command=\"certsync-receive serve\",restrict ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIlD+0kDuV0pczfofkp5bfOsXiNcovkcGcJuIxqfd54L certsync@npm"
        );
    }

    #[test]
    fn from_list_and_no_comment() {
        let line = authorized_keys_line(
            &format!("  {ECDSA256}\n"),
            Some("192.0.2.10,2001:db8::/32,!10.0.0.1,*.example.com"),
            "/usr/local/bin/certsync-receive --config /etc/certsync/receive.toml serve",
        )
        .unwrap();
        assert!(line.starts_with(
            "command=\"/usr/local/bin/certsync-receive --config /etc/certsync/receive.toml serve\",restrict,from=\"192.0.2.10,2001:db8::/32,!10.0.0.1,*.example.com\" ecdsa-sha2-nistp256 AAAAE2"
        ));
        assert!(line.ends_with("ku/c="), "{line}");
    }

    #[test]
    fn tabs_and_spaces_in_comment() {
        let tabbed = ED25519.replace(' ', "\t");
        let key = parse_public_key_line(&tabbed).unwrap();
        assert_eq!(key.key_type, "ssh-ed25519");
        assert_eq!(key.comment, "certsync@npm");
        let with_space = format!("{ED25519} laptop key");
        assert_eq!(
            parse_public_key_line(&with_space).unwrap().comment,
            "certsync@npm laptop key"
        );
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(
            authorized_keys_line("", None, "x"),
            Err(AuthorizedKeyError::Empty)
        );
        assert!(matches!(
            authorized_keys_line("ssh-dss AAAAB3NzaC1kc3M=", None, "x"),
            Err(AuthorizedKeyError::UnsupportedType { .. })
        ));
        assert!(matches!(
            authorized_keys_line("command=\"sh\" ssh-ed25519 AAAA", None, "x"),
            Err(AuthorizedKeyError::UnsupportedType { .. })
        ));
        assert!(matches!(
            authorized_keys_line("ssh-ed25519", None, "x"),
            Err(AuthorizedKeyError::MissingData { .. })
        ));
        assert!(matches!(
            authorized_keys_line("ssh-ed25519 AAAA$$$$", None, "x"),
            Err(AuthorizedKeyError::BadBase64 { .. })
        ));
        // Valid ECDSA data under an ed25519 label.
        let relabelled = ECDSA256.replace("ecdsa-sha2-nistp256", "ssh-ed25519");
        assert!(matches!(
            authorized_keys_line(&relabelled, None, "x"),
            Err(AuthorizedKeyError::TypeMismatch { .. })
        ));
        assert_eq!(
            authorized_keys_line(&format!("{ED25519}\nssh-ed25519 AAAA"), None, "x"),
            Err(AuthorizedKeyError::NotOneLine)
        );
        assert_eq!(
            authorized_keys_line(&format!("{ED25519} a\u{7}b"), None, "x"),
            Err(AuthorizedKeyError::BadComment)
        );
    }

    #[test]
    fn refuses_bad_from_and_command() {
        for from in [
            "",
            "1.2.3.4 5.6.7.8",
            "1.2.3.4\",command=\"sh",
            "1.2.3.4,,5.6.7.8",
            "10.0.0.0/",
            "10.0.0.0/129",
            "*.x/8",
            "a\\b",
        ] {
            assert!(
                matches!(
                    authorized_keys_line(ED25519, Some(from), "x"),
                    Err(AuthorizedKeyError::BadFrom { .. })
                ),
                "{from:?} accepted"
            );
        }
        for command in ["", "  ", "a\"b", "a\\b", "a\nb"] {
            assert!(
                matches!(
                    authorized_keys_line(ED25519, None, command),
                    Err(AuthorizedKeyError::BadCommand { .. })
                ),
                "{command:?} accepted"
            );
        }
    }

    #[test]
    fn base64_decoder() {
        assert_eq!(decode_base64("TWFu").unwrap(), b"Man");
        assert_eq!(decode_base64("TWE=").unwrap(), b"Ma");
        assert_eq!(decode_base64("TQ==").unwrap(), b"M");
        assert_eq!(decode_base64("TQ==TWFu"), None);
        assert_eq!(decode_base64("TQ="), None);
        assert_eq!(decode_base64("T==="), None);
        assert_eq!(decode_base64("TW-u"), None);
    }
}
