//! The optional shared bearer token, checked on every call to the Butler service.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` in constant time.
#[derive(Clone)]
pub(crate) struct TokenCheck {
    token: Option<Vec<u8>>,
}

impl TokenCheck {
    /// A check for `token`; `None` lets every call through.
    pub(crate) fn new(token: Option<String>) -> Self {
        Self { token: token.filter(|t| !t.is_empty()).map(String::into_bytes) }
    }

    /// The tonic interceptor.
    pub(crate) fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::as_bytes);
        match presented {
            Some(p) if bool::from(p.ct_eq(expected)) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    #[test]
    fn checks_the_token() {
        let check = TokenCheck::new(Some("s3cret".into()));
        assert!(check.check(with(Some("Bearer s3cret"))).is_ok());
        for bad in [None, Some("Bearer s3cre"), Some("Bearer s3cret2"), Some("s3cret"), Some("Basic s3cret")] {
            let err = check.check(with(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(TokenCheck::new(None).check(with(None)).is_ok());
    }
}
