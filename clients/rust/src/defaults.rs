//! What the bindings resolve before building options: the endpoint and token from the
//! environment when not given, and TLS material given as a file path or as PEM text.
//! One rule each, so that Python and Node agree.

use crate::error::Error;

/// The environment variable naming the server when no endpoint is given.
pub const ENDPOINT_ENV: &str = "KINESIS_BUTLER_ENDPOINT";
/// The environment variable holding the bearer token when none is given.
pub const TOKEN_ENV: &str = "KINESIS_BUTLER_TOKEN";

/// `given` when it is set and not blank, else `$KINESIS_BUTLER_ENDPOINT`.
///
/// Errors: [`crate::ErrorKind::InvalidArgument`] when neither is set.
pub fn endpoint_or_env(given: Option<String>) -> Result<String, Error> {
    endpoint_from(given, std::env::var(ENDPOINT_ENV).ok())
}

/// `given` when set, else `$KINESIS_BUTLER_TOKEN` (unless blank).
pub fn token_or_env(given: Option<String>) -> Option<String> {
    token_from(given, std::env::var(TOKEN_ENV).ok())
}

fn endpoint_from(given: Option<String>, env: Option<String>) -> Result<String, Error> {
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    set(given).or_else(|| set(env)).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "no endpoint: pass the server's address (e.g. http://127.0.0.1:50051) or set {ENDPOINT_ENV}"
        ))
    })
}

fn token_from(given: Option<String>, env: Option<String>) -> Option<String> {
    given.or_else(|| env.filter(|v| !v.trim().is_empty()))
}

/// Where TLS material comes from, as the caller gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PemSource {
    /// Text: PEM when it contains a `-----BEGIN` line, otherwise a file path.
    Text(String),
    /// Bytes (a Python `bytes`, a Node `Buffer`): the PEM contents.
    Contents(Vec<u8>),
    /// A path object (Python `os.PathLike`): read from the file.
    Path(String),
}

/// The PEM text of the TLS option `option` (named in the caller's spelling in errors).
///
/// Errors: [`crate::ErrorKind::InvalidArgument`] for a file that cannot be read or
/// contents that are not UTF-8 PEM.
pub fn resolve_pem(option: &str, source: PemSource) -> Result<String, Error> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| Error::InvalidArgument(format!("{option}: cannot read the file {path:?}: {e}")))
    };
    let bytes = match source {
        PemSource::Text(text) if looks_like_pem(text.as_bytes()) => return Ok(text),
        PemSource::Text(path) | PemSource::Path(path) => read(&path)?,
        PemSource::Contents(bytes) => bytes,
    };
    if !looks_like_pem(&bytes) {
        return Err(Error::InvalidArgument(format!("{option}: not PEM (no \"-----BEGIN\" line)")));
    }
    String::from_utf8(bytes).map_err(|_| Error::InvalidArgument(format!("{option}: PEM is not UTF-8 text")))
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn the_endpoint_and_token_fall_back_to_the_environment() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(endpoint_from(s("http://a:1"), s("http://env:2")).unwrap(), "http://a:1");
        assert_eq!(endpoint_from(None, s("http://env:2")).unwrap(), "http://env:2");
        assert_eq!(endpoint_from(s(" "), s("http://env:2")).unwrap(), "http://env:2");
        let err = endpoint_from(None, s("")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains(ENDPOINT_ENV), "{err}");
        assert_eq!(token_from(s("t"), s("env")), s("t"));
        assert_eq!(token_from(None, s("env")), s("env"));
        assert_eq!(token_from(None, s("")), None);
    }

    #[test]
    fn pem_is_taken_as_text_bytes_or_read_from_a_path() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(resolve_pem("ca", PemSource::Text(pem.into())).unwrap(), pem);
        assert_eq!(resolve_pem("ca", PemSource::Contents(pem.as_bytes().to_vec())).unwrap(), pem);
        let dir = std::env::temp_dir().join(format!("kb-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, pem).unwrap();
        let path = file.to_string_lossy().into_owned();
        assert_eq!(resolve_pem("ca", PemSource::Text(path.clone())).unwrap(), pem);
        assert_eq!(resolve_pem("ca", PemSource::Path(path)).unwrap(), pem);
        let missing = resolve_pem("tls.ca", PemSource::Text("/no/such/ca.pem".into())).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::InvalidArgument);
        assert!(missing.to_string().starts_with("invalid argument: tls.ca: cannot read"), "{missing}");
        let junk = resolve_pem("ca", PemSource::Contents(b"junk".to_vec())).unwrap_err();
        assert!(junk.to_string().contains("not PEM"), "{junk}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
