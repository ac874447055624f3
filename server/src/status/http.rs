//! The status listener (`--http-listen`): `/` the page, `/status.json` the document it
//! polls. The page itself holds no data; the JSON needs `authorization: Bearer <token>`
//! when the server has a token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

const PAGE: &str = include_str!("page.html");

/// What the handler needs.
#[derive(Clone)]
pub(crate) struct HttpState {
    /// The last `/status.json`, as built by `view::run`.
    pub(crate) status: Arc<Mutex<Arc<String>>>,
    /// The bearer token, if one is set.
    pub(crate) token: Option<Arc<Vec<u8>>>,
}

fn respond(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// Whether the request presents the token (or none is needed).
pub(crate) fn authorized(token: Option<&[u8]>, header: Option<&str>) -> bool {
    let Some(expected) = token else {
        return true;
    };
    let presented = header.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected)))
}

async fn handle(req: Request<hyper::body::Incoming>, state: HttpState) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::GET {
        return Ok(respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n"));
    }
    Ok(match req.uri().path() {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/status.json" => {
            let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
            if !authorized(state.token.as_deref().map(Vec::as_slice), header) {
                respond(
                    StatusCode::UNAUTHORIZED,
                    "application/json",
                    r#"{"error":"missing or invalid bearer token: send authorization: Bearer <token>"}"#,
                )
            } else {
                let body = state.status.lock().expect("status").clone();
                respond(StatusCode::OK, "application/json", body.as_bytes().to_vec())
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found: try / or /status.json\n"),
    })
}

/// Serves until `stop`.
pub(crate) async fn serve(addr: SocketAddr, state: HttpState, stop: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving the status page at / and /status.json");
    tokio::spawn(async move {
        loop {
            let (conn, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "status listener accept failed");
                        continue;
                    }
                },
            };
            let state = state.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    done = conn => if let Err(e) = done {
                        debug!(%peer, error = %e, "status connection failed");
                    },
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_token() {
        assert!(authorized(None, None));
        assert!(authorized(Some(b"t0k"), Some("Bearer t0k")));
        assert!(!authorized(Some(b"t0k"), Some("Bearer nope")));
        assert!(!authorized(Some(b"t0k"), None));
        assert!(!authorized(Some(b"t0k"), Some("t0k")));
    }
}
