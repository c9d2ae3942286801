//! No function outside tests is longer than [`MAX_FN_LINES`] lines: a long
//! function is a missing name. When this fails, split the function into
//! the steps a reader says aloud (hello, decide, read, run, report), each
//! with its own name.
//!
//! The scan is deliberately small: a lexer that blanks out comments,
//! string, byte-string, raw-string and char literals (so a `{` or `fn`
//! inside them counts for nothing), then brace matching. A function runs
//! from the line of its `fn` to the line of its closing `}`. Items marked
//! `#[cfg(test)]` (the `mod tests` blocks) are skipped whole, and so are
//! the crates' `tests/` dirs, which the scan never enters.

use std::path::{Path, PathBuf};

/// The longest a function outside tests may be, in lines.
const MAX_FN_LINES: usize = 80;

/// The crates whose `src/` is held to the limit.
const CRATES: [&str; 3] = ["certsync-core", "certsync-push", "certsync-receive"];

/// One function and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FnSpan {
    name: String,
    /// 1-based line of `fn`.
    line: usize,
    lines: usize,
}

/// `text` with every comment and literal replaced by spaces (newlines
/// kept, so line numbers stay), as bytes: only ASCII is ever looked at.
fn blank_literals(text: &str) -> Vec<u8> {
    let src = text.as_bytes();
    let mut out = src.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to.min(src.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    while i < src.len() {
        let end = match src[i] {
            b'/' if src.get(i + 1) == Some(&b'/') => line_end(src, i),
            b'/' if src.get(i + 1) == Some(&b'*') => block_comment_end(src, i),
            b'"' => quoted_end(src, i + 1, b'"'),
            b'r' | b'b' if !ident_byte_before(src, i) => match raw_or_byte_literal_end(src, i) {
                Some(end) => end,
                None => {
                    i += 1;
                    continue;
                }
            },
            b'\'' => match char_literal_end(text, i) {
                Some(end) => end,
                None => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                i += 1;
                continue;
            }
        };
        blank(&mut out, i, end);
        i = end;
    }
    out
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn ident_byte_before(src: &[u8], i: usize) -> bool {
    i > 0 && ident_byte(src[i - 1])
}

fn line_end(src: &[u8], i: usize) -> usize {
    src[i..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(src.len(), |p| i + p)
}

/// The end of a (nesting) block comment starting at `i`.
fn block_comment_end(src: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i + 1 < src.len() {
        match (src[i], src[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    src.len()
}

/// The end of a literal whose body starts at `i` and ends at an
/// unescaped `close`.
fn quoted_end(src: &[u8], mut i: usize, close: u8) -> usize {
    while i < src.len() {
        match src[i] {
            b'\\' => i += 2,
            b if b == close => return i + 1,
            _ => i += 1,
        }
    }
    src.len()
}

/// `r"…"`, `r#"…"#`, `b"…"`, `br#"…"#`, `b'x'` starting at `i`; `None`
/// when `i` starts an identifier instead.
fn raw_or_byte_literal_end(src: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if src[j] == b'b' {
        j += 1;
        match src.get(j) {
            Some(b'"') => return Some(quoted_end(src, j + 1, b'"')),
            Some(b'\'') => return Some(quoted_end(src, j + 1, b'\'')),
            Some(b'r') => {}
            _ => return None,
        }
    }
    // At `r`: count the hashes, then a quote must follow.
    j += 1;
    let hashes = src[j..].iter().take_while(|&&b| b == b'#').count();
    j += hashes;
    if src.get(j) != Some(&b'"') {
        return None;
    }
    let mut closing = vec![b'"'];
    closing.extend(std::iter::repeat_n(b'#', hashes));
    let body = j + 1;
    src[body..]
        .windows(closing.len())
        .position(|w| w == closing.as_slice())
        .map(|p| body + p + closing.len())
        .or(Some(src.len()))
}

/// A char literal starting at `i` (`'x'`, `'\n'`, `'\u{1F600}'`, `'{'`);
/// `None` for a lifetime or label (`'a`, `'static`).
fn char_literal_end(text: &str, i: usize) -> Option<usize> {
    let src = text.as_bytes();
    match src.get(i + 1)? {
        b'\\' => Some(quoted_end(src, i + 1, b'\'')),
        _ => {
            // One char (maybe several UTF-8 bytes), then the quote. After
            // an ASCII quote is a char boundary.
            let c = text.get(i + 1..)?.chars().next()?;
            let after = i + 1 + c.len_utf8();
            (src.get(after) == Some(&b'\'')).then_some(after + 1)
        }
    }
}

/// The index just past the `}` matching the `{` at `open`.
fn matching_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, &b) in code.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// Where the item starting at `from` ends: past its `;`, or past the
/// block of its first `{` (outside parentheses and brackets).
fn item_end(code: &[u8], from: usize) -> usize {
    let mut nest = 0usize;
    for (k, &b) in code.iter().enumerate().skip(from) {
        match b {
            b'(' | b'[' => nest += 1,
            b')' | b']' => nest = nest.saturating_sub(1),
            b';' if nest == 0 => return k + 1,
            b'{' if nest == 0 => return matching_brace(code, k),
            _ => {}
        }
    }
    code.len()
}

/// The body `{` of the `fn` whose signature starts at `from`; `None` for
/// a declaration without a body (`fn f();` in a trait).
fn body_open(code: &[u8], from: usize) -> Option<usize> {
    let mut nest = 0usize;
    for (k, &b) in code.iter().enumerate().skip(from) {
        match b {
            b'(' | b'[' => nest += 1,
            b')' | b']' => nest = nest.saturating_sub(1),
            b';' if nest == 0 => return None,
            b'{' if nest == 0 => return Some(k),
            _ => {}
        }
    }
    None
}

fn line_of(code: &[u8], at: usize) -> usize {
    1 + code[..at].iter().filter(|&&b| b == b'\n').count()
}

fn word_at(code: &[u8], at: usize, word: &[u8]) -> bool {
    code[at..].starts_with(word)
        && !ident_byte_before(code, at)
        && code.get(at + word.len()).is_none_or(|&b| !ident_byte(b))
}

/// Every function with a body in `text`, outside `#[cfg(test)]` items.
fn functions(text: &str) -> Vec<FnSpan> {
    let code = blank_literals(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        if code[i..].starts_with(b"#[cfg(test)]") {
            i = item_end(&code, i + b"#[cfg(test)]".len());
            continue;
        }
        if word_at(&code, i, b"fn") {
            let name_start = i
                + 2
                + code[i + 2..]
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            let name_len = code[name_start..]
                .iter()
                .take_while(|&&b| ident_byte(b))
                .count();
            // `fn(u8) -> u8`, a function pointer type, has no name.
            if name_len > 0 {
                if let Some(open) = body_open(&code, name_start) {
                    let close = matching_brace(&code, open);
                    let line = line_of(&code, i);
                    out.push(FnSpan {
                        name: String::from_utf8_lossy(&code[name_start..name_start + name_len])
                            .into_owned(),
                        line,
                        lines: line_of(&code, close.saturating_sub(1)) - line + 1,
                    });
                }
            }
        }
        i += 1;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every function of the crates' `src/` longer than `max`, as
/// `path:line name (N lines)`, longest first.
fn too_long(repo: &Path, max: usize) -> Vec<(usize, String)> {
    let mut long = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&repo.join(krate).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for f in functions(&text) {
                if f.lines > max {
                    let rel = file.strip_prefix(repo).unwrap_or(&file);
                    long.push((
                        f.lines,
                        format!(
                            "{}:{} {} ({} lines)",
                            rel.display(),
                            f.line,
                            f.name,
                            f.lines
                        ),
                    ));
                }
            }
        }
    }
    long.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    long
}

#[test]
fn no_function_outside_tests_is_longer_than_the_limit() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let long = too_long(&repo, MAX_FN_LINES);
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FN_LINES} lines (split each into named steps):\n{}",
        long.iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The scanner itself: it finds a long function (so the check above can
/// fail), measures from `fn` to `}`, and is not fooled by braces in
/// literals, comments, lifetimes or test modules.
#[test]
fn the_scanner_measures_functions_and_skips_tests_and_literals() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let src = format!(
        r##"
/// docs are not counted
pub(crate) async fn long<'a>(s: &'a str) -> Result<(), String> {{
{body}    let _ = "{{ not a brace";
    let _ = r#"}} nor " this"#;
    let _ = b'{{';
    let _ = '}}';
    // }} a comment
    /* {{ nested /* }} */ comment */
    Ok(())
}}

fn short(f: fn(u8) -> u8) -> u8 {{ f(1) }}

trait T {{
    fn declared(&self);
}}

#[cfg(test)]
mod tests {{
    fn in_tests() {{
{body}    }}
}}

fn after_tests() {{
}}
"##
    );
    let got = functions(&src);
    let names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["long", "short", "after_tests"], "{got:?}");
    assert_eq!(got[0].line, 3);
    // The signature, the body, 6 lines of literals and comments, `Ok(())`
    // and the closing brace.
    assert_eq!(got[0].lines, MAX_FN_LINES + 9);
    assert_eq!(got[1].lines, 1);
    assert_eq!(got[2].lines, 2);

    // And on disk: a crate with that file fails the check, naming it.
    let repo = tempfile::tempdir().unwrap();
    for krate in CRATES {
        std::fs::create_dir_all(repo.path().join(krate).join("src")).unwrap();
    }
    std::fs::write(repo.path().join("certsync-receive/src/lib.rs"), &src).unwrap();
    let long = too_long(repo.path(), MAX_FN_LINES);
    assert_eq!(long.len(), 1, "{long:?}");
    assert_eq!(
        long[0].1,
        format!(
            "certsync-receive/src/lib.rs:3 long ({} lines)",
            MAX_FN_LINES + 9
        )
    );
}
