//! Reaching the server: the endpoint (plain or TLS), the bearer token on every call,
//! and the connection itself.

use std::time::Duration;

use kinesis_butler_proto::butler_client::ButlerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::Error;
use crate::options::ConsumerOptions;

/// Largest event accepted: a Kinesis GetRecords answer is at most 10 MiB.
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// The generated client with the token interceptor.
pub(crate) type Api = ButlerClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
pub(crate) struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken(<redacted>)" } else { "BearerToken(None)" })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How to reach the server, checked once when the consumer is made.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub url: String,
    connect: Connect,
    token: BearerToken,
}

/// An endpoint to connect to, or a channel the caller made.
#[derive(Clone, Debug)]
enum Connect {
    Endpoint(Box<Endpoint>),
    Channel(Channel),
}

fn bearer_token(options: &ConsumerOptions) -> Result<BearerToken, Error> {
    let token = match &options.auth_token {
        None => None,
        Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
            Error::InvalidArgument("auth_token must be printable ASCII (it is sent as a header)".into())
        })?),
    };
    Ok(BearerToken(token))
}

/// HTTP/2 flow-control window of the session stream (records flow server → client).
const RECEIVE_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// Largest HTTP/2 frame this client accepts (the protocol allows up to 16 MiB - 1).
const MAX_FRAME_BYTES: u32 = 1024 * 1024;

impl Target {
    /// Checks the URL, TLS settings and token.
    pub(crate) fn new(url: &str, options: &ConsumerOptions) -> Result<Self, Error> {
        let invalid = |m: String| Error::InvalidArgument(m);
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| invalid(format!("invalid endpoint {url:?}: {e} (expected e.g. http://127.0.0.1:50051)")))?
            .connect_timeout(options.request_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            // Batches are up to megabytes: HTTP/2's default 64 KiB windows would stall the
            // stream on a window update every few frames.
            .initial_stream_window_size(Some(RECEIVE_WINDOW_BYTES))
            .initial_connection_window_size(Some(RECEIVE_WINDOW_BYTES))
            // Lets the server send a batch in a few large DATA frames rather than hundreds
            // of 16 KiB ones, each a separate wake-up and copy on this side.
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let https = match endpoint.uri().scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(invalid(format!(
                    "invalid endpoint {url:?}: expected http:// or https://, e.g. http://127.0.0.1:50051"
                )))
            }
        };
        match (&options.tls, https) {
            (Some(_), false) => {
                return Err(invalid(format!("TLS options need an https:// endpoint, not {url:?}")));
            }
            (tls, true) => {
                let tls = tls.clone().unwrap_or_default();
                let mut config = ClientTlsConfig::new();
                config = match &tls.ca_certificate_pem {
                    Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                    None => config.with_native_roots(),
                };
                if let Some(name) = &tls.domain_name {
                    config = config.domain_name(name.clone());
                }
                match (&tls.client_certificate_pem, &tls.client_key_pem) {
                    (Some(cert), Some(key)) => config = config.identity(Identity::from_pem(cert, key)),
                    (None, None) => {}
                    _ => return Err(invalid("a client certificate needs its key, and a key its certificate".into())),
                }
                endpoint = endpoint.tls_config(config).map_err(|e| invalid(format!("invalid TLS settings: {e}")))?;
            }
            (None, false) => {}
        }
        let token = bearer_token(options)?;
        Ok(Self { url: url.to_owned(), connect: Connect::Endpoint(Box::new(endpoint)), token })
    }

    /// A channel the caller made (its own transport, TLS and timeouts); the token is
    /// still added to every call.
    pub(crate) fn with_channel(channel: Channel, options: &ConsumerOptions) -> Result<Self, Error> {
        if options.tls.is_some() {
            return Err(Error::InvalidArgument(
                "TLS options do not apply to a channel made by the caller: set TLS on its Endpoint".into(),
            ));
        }
        let token = bearer_token(options)?;
        Ok(Self { url: "(a channel made by the caller)".into(), connect: Connect::Channel(channel), token })
    }

    /// Connects (bounded by the endpoint's connect timeout).
    pub(crate) async fn connect(&self) -> Result<Api, Error> {
        let unreachable = |message: String| Error::Connection { endpoint: self.url.clone(), message };
        let channel = match &self.connect {
            Connect::Endpoint(endpoint) => endpoint.connect().await.map_err(|e| unreachable(error_chain(&e)))?,
            Connect::Channel(channel) => channel.clone(),
        };
        Ok(ButlerClient::with_interceptor(channel, self.token.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// An error and its causes in one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The generated client over `channel`, without a token (for unit tests).
#[cfg(test)]
pub(crate) fn api(channel: Channel) -> Api {
    ButlerClient::with_interceptor(channel, BearerToken(None))
}
