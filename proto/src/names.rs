//! Name rules shared by the server and the client: apps, streams, shards and sessions
//! are named by non-blank strings of bounded length, and a session names each of its
//! streams once.

use std::collections::HashSet;

/// The longest name accepted, in bytes (characters for the ASCII names Kinesis uses).
pub const MAX_NAME_LEN: usize = 256;

/// Checks one name; `what` names it in the message (e.g. `app`, `stream name`).
///
/// A name must not be empty or blank, and at most [`MAX_NAME_LEN`] long.
pub fn validate_name(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("{what} is longer than {MAX_NAME_LEN} characters"));
    }
    Ok(())
}

/// Checks the streams of a session: at least one, each a valid name
/// ([`validate_name`] as `stream name`), none named twice.
pub fn validate_streams<S: AsRef<str>>(streams: &[S]) -> Result<(), String> {
    if streams.is_empty() {
        return Err("streams must name at least one stream".into());
    }
    let mut seen = HashSet::new();
    for s in streams {
        let s = s.as_ref();
        validate_name("stream name", s)?;
        if !seen.insert(s) {
            return Err(format!("stream {s:?} is named twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_not_blank_and_bounded() {
        assert_eq!(validate_name("app", "orders"), Ok(()));
        assert_eq!(validate_name("app", ""), Err("app must not be empty".into()));
        assert_eq!(validate_name("app", " \t"), Err("app must not be empty".into()));
        assert_eq!(validate_name("stream", &"s".repeat(256)), Ok(()));
        assert_eq!(validate_name("stream", &"s".repeat(257)), Err("stream is longer than 256 characters".into()));
    }

    #[test]
    fn streams_are_named_once_and_at_least_one() {
        assert_eq!(validate_streams(&["a", "b"]), Ok(()));
        assert_eq!(validate_streams::<String>(&[]), Err("streams must name at least one stream".into()));
        assert_eq!(validate_streams(&["a", "a"]), Err("stream \"a\" is named twice".into()));
        assert_eq!(validate_streams(&["a", " "]), Err("stream name must not be empty".into()));
        assert!(validate_streams(&["x".repeat(300)]).is_err());
    }
}
