//! What a `reload` entry names: a compose service, of the configured
//! project or of the one it names, or one container by name.
//!
//! - `"postfix-mailcow"`: containers labelled with this compose service,
//!   in `[docker] project` (or, without one, in the single project that
//!   has it).
//! - `"shop/smtp"`: containers of compose service `smtp` in project
//!   `shop`, whatever `[docker] project` says: any compose project on the
//!   host, by label.
//! - `"container:edge-relay"`: the one container named exactly
//!   `edge-relay` (a `docker run --name` container without compose labels).
//!
//! Its reload command (`[docker.reload]`) is looked up under the whole
//! entry first, then, for `project/service`, under the service alone.

/// A parsed `reload` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// By compose labels; `project` overrides `[docker] project`.
    Service {
        project: Option<&'a str>,
        service: &'a str,
    },
    /// By exact container name.
    Container(&'a str),
}

/// The prefix of a by-name entry.
pub const CONTAINER_PREFIX: &str = "container:";

pub fn parse(entry: &str) -> Selector<'_> {
    if let Some(name) = entry.strip_prefix(CONTAINER_PREFIX) {
        return Selector::Container(name);
    }
    match entry.split_once('/') {
        Some((project, service)) => Selector::Service {
            project: Some(project),
            service,
        },
        None => Selector::Service {
            project: None,
            service: entry,
        },
    }
}

/// A `reload` entry that names no service or container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reload entry {0:?}: write a compose service (\"postfix-mailcow\"), \"project/service\" or \"container:NAME\" (letters, digits, - _ .)")]
pub struct BadEntry(pub String);

/// Why `entry` is not a valid `reload` entry, if it is not.
pub fn check(entry: &str) -> Result<(), BadEntry> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let valid = match parse(entry) {
        Selector::Container(name) => ok(name),
        Selector::Service { project, service } => project.is_none_or(ok) && ok(service),
    };
    if valid {
        Ok(())
    } else {
        Err(BadEntry(entry.to_string()))
    }
}

/// The `[docker.reload]` keys to try for `entry`, in order.
pub fn command_keys(entry: &str) -> Vec<&str> {
    match parse(entry) {
        Selector::Service {
            project: Some(_),
            service,
        } => vec![entry, service],
        _ => vec![entry],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        assert_eq!(
            parse("postfix-mailcow"),
            Selector::Service {
                project: None,
                service: "postfix-mailcow"
            }
        );
        assert_eq!(
            parse("shop/smtp"),
            Selector::Service {
                project: Some("shop"),
                service: "smtp"
            }
        );
        assert_eq!(parse("container:edge"), Selector::Container("edge"));
        for good in ["a", "shop/smtp", "container:edge-relay_1"] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/smtp",
            "shop/",
            "a/b/c",
            "container:",
            "x y",
            "container:a/b",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert_eq!(command_keys("shop/smtp"), ["shop/smtp", "smtp"]);
        assert_eq!(command_keys("container:e"), ["container:e"]);
    }
}
