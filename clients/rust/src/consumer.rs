//! The consumer: sessions one after another (reconnecting with backoff) until stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::connection::Target;
use crate::error::Error;
use crate::handler::Handler;
use crate::options::{ConsumerOptions, FailurePolicy};
use crate::session::{self, SessionEnd, Shared};
use crate::stats::{Counter, Counters, Stats};
use kinesis_butler_proto::backoff::Backoff;
use kinesis_butler_proto::names;

/// Reads streams of an app through a Kinesis Butler server and hands their records to
/// a [`Handler`], checkpointing for it. See the [crate documentation](crate).
#[derive(Debug)]
pub struct Consumer {
    target: Target,
    app: String,
    streams: Vec<String>,
    options: Arc<ConsumerOptions>,
    stop: CancellationToken,
    running: AtomicBool,
    stats: Arc<Counters>,
}

impl Consumer {
    /// A consumer of `streams` for `app` through the server at `endpoint`
    /// (e.g. `http://127.0.0.1:50051`). Nothing connects until [`Consumer::run`].
    ///
    /// Errors: [`crate::ErrorKind::InvalidArgument`] for an empty app or stream list,
    /// a blank or overlong name (the server's rules, `kinesis_butler_proto::names`),
    /// a stream named twice, an endpoint that is not a URI, or invalid options.
    pub fn new<S: Into<String>>(
        endpoint: impl Into<String>,
        app: impl Into<String>,
        streams: impl IntoIterator<Item = S>,
        options: ConsumerOptions,
    ) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        Self::with_target(app.into(), streams, options, |options| Target::new(&endpoint, options))
    }

    /// A consumer that reaches the server through `channel`, a tonic channel the caller
    /// made (its own connector, TLS and timeouts), instead of an endpoint URL. The
    /// options' `auth_token` is still sent on every call; `tls` must be `None` (TLS is
    /// the channel's business). Errors as [`Consumer::new`].
    pub fn with_channel<S: Into<String>>(
        channel: tonic::transport::Channel,
        app: impl Into<String>,
        streams: impl IntoIterator<Item = S>,
        options: ConsumerOptions,
    ) -> Result<Self, Error> {
        Self::with_target(app.into(), streams, options, |options| Target::with_channel(channel, options))
    }

    fn with_target<S: Into<String>>(
        app: String,
        streams: impl IntoIterator<Item = S>,
        options: ConsumerOptions,
        target: impl FnOnce(&ConsumerOptions) -> Result<Target, Error>,
    ) -> Result<Self, Error> {
        let streams: Vec<String> = streams.into_iter().map(Into::into).collect();
        names::validate_name("app", &app).map_err(Error::InvalidArgument)?;
        names::validate_streams(&streams).map_err(Error::InvalidArgument)?;
        options.validate()?;
        let target = target(&options)?;
        Ok(Self {
            target,
            app,
            streams,
            options: Arc::new(options),
            stop: CancellationToken::new(),
            running: AtomicBool::new(false),
            stats: Arc::default(),
        })
    }

    /// The settings.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// A snapshot of the counters (since this consumer was made) and of the lag of the
    /// shards it holds now. Cheap; callable from any thread, also while running.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Asks [`Consumer::run`] to stop: no new batches are taken, batches in hand are
    /// finished and checkpointed, then the session is closed so that its shards move
    /// to other consumers at once. A stopped consumer stays stopped.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// A token that stops the consumer when cancelled (the same as [`Consumer::stop`]);
    /// clone it into signal handlers or other tasks.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Whether [`Consumer::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Runs `handler` on every record until the consumer is stopped (then `Ok`) or
    /// fails: a handler error with [`crate::FailurePolicy::Stop`], a stream that does
    /// not exist, invalid settings, or too many failed connections
    /// (`max_initial_connect_attempts` before the first session, `max_reconnect_attempts` after).
    /// Connection losses are otherwise retried forever, with backoff. A consumer that
    /// was stopped before `run` fails at once with [`crate::ErrorKind::Stopped`].
    pub async fn run(&self, handler: impl Handler) -> Result<(), Error> {
        self.run_shared(Arc::new(handler)).await
    }

    /// [`Consumer::run`] for a handler that is already shared (as bindings hold theirs).
    pub async fn run_shared(&self, handler: Arc<dyn Handler>) -> Result<(), Error> {
        self.claim()?;
        let _running = RunningGuard(&self.running);
        self.serve(handler).await
    }

    /// Starts a run now: the checks of [`Consumer::run`] (not running already, not
    /// stopped) are made at this call, not when the returned [`Run`] is first polled.
    /// For callers whose `run()` returns before its future runs (the bindings' promises
    /// and tasks): a [`Consumer::stop`] right after the call then ends this run
    /// gracefully, instead of making it fail with [`crate::ErrorKind::Stopped`].
    pub fn begin(self: &Arc<Self>, handler: Arc<dyn Handler>) -> Result<Run, Error> {
        self.claim()?;
        Ok(Run { consumer: self.clone(), handler })
    }

    /// Marks the consumer running, unless it is running already or was stopped.
    fn claim(&self) -> Result<(), Error> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidArgument("this consumer is already running".into()));
        }
        if self.stop.is_cancelled() {
            self.running.store(false, Ordering::Release);
            // A stopped consumer stays stopped: running it again would return at once
            // and silently handle nothing.
            return Err(Error::Stopped);
        }
        Ok(())
    }

    /// The run itself, once claimed.
    async fn serve(&self, handler: Arc<dyn Handler>) -> Result<(), Error> {
        let shared = Arc::new(Shared {
            target: self.target.clone(),
            app: self.app.clone(),
            streams: self.streams.clone(),
            options: self.options.clone(),
            handler,
            handler_slots: Arc::new(Semaphore::new(self.options.max_concurrent_handlers)),
            shard_locks: Mutex::default(),
            stats: self.stats.clone(),
            dead_letter: match &self.options.on_failure {
                FailurePolicy::DeadLetter(target) => Some(target.open()),
                _ => None,
            },
            expire: CancellationToken::new(),
        });
        let mut workers = JoinSet::new();
        let result = self.sessions(&shared, &mut workers).await;
        // Workers of broken sessions may still be finishing their batch in hand.
        if !workers.is_empty() {
            let drained = tokio::time::timeout(self.options.shutdown_timeout, async {
                while workers.join_next().await.is_some() {}
            });
            if drained.await.is_err() {
                shared.expire.cancel();
                if shared.handler.keeps_running_when_dropped() {
                    warn!(
                        workers = workers.len(),
                        "shutdown timeout: cancelled the calls in hand, waiting for them to return"
                    );
                    while workers.join_next().await.is_some() {}
                } else {
                    warn!(workers = workers.len(), "shutdown timeout: dropping batches still in hand");
                    workers.shutdown().await;
                }
            }
        }
        info!(app = %self.app, streams = ?self.streams, ok = result.is_ok(), "consumer stopped");
        result
    }

    async fn sessions(&self, shared: &Arc<Shared>, workers: &mut JoinSet<()>) -> Result<(), Error> {
        let mut backoff = Backoff::new(self.options.reconnect_backoff);
        let mut failures = 0u32;
        let mut connected_once = false;
        loop {
            let opened = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(()),
                opened = session::open(shared) => opened,
            };
            match opened {
                Ok(session) => {
                    info!(app = %self.app, streams = ?self.streams, session = %session.id, endpoint = %self.target.url,
                        "session started");
                    backoff.reset();
                    failures = 0;
                    if connected_once {
                        self.stats.add(Counter::Reconnects, 1);
                    }
                    connected_once = true;
                    match session::run(shared, session, &self.stop, workers).await {
                        SessionEnd::Stopped => return Ok(()),
                        SessionEnd::Failed(e) => return Err(e),
                        SessionEnd::Disconnected(why) => {
                            warn!(app = %self.app, error = %why, "session lost; reconnecting")
                        }
                    }
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    failures += 1;
                    warn!(app = %self.app, attempt = failures, error = %e, "cannot open a session");
                    let limit = if connected_once {
                        self.options.max_reconnect_attempts
                    } else {
                        match (self.options.max_initial_connect_attempts, self.options.max_reconnect_attempts) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        }
                    };
                    if limit.is_some_and(|max| failures >= max) {
                        return Err(e);
                    }
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// A run started by [`Consumer::begin`]; [`Run::finish`] runs it to its end. Dropped
/// unfinished, it leaves the consumer free to run again.
pub struct Run {
    consumer: Arc<Consumer>,
    handler: Arc<dyn Handler>,
}

impl Run {
    /// Runs the handler until the consumer is stopped or fails, as [`Consumer::run`].
    pub async fn finish(self) -> Result<(), Error> {
        let handler = self.handler.clone();
        self.consumer.serve(handler).await
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.consumer.running.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("app", &self.consumer.app).finish_non_exhaustive()
    }
}

/// Clears the running flag however `run` ends (also when its future is dropped).
struct RunningGuard<'a>(&'a AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, TlsOptions};

    fn kind(result: Result<Consumer, Error>) -> ErrorKind {
        result.expect_err("invalid").kind()
    }

    #[test]
    fn bad_arguments_are_refused_before_connecting() {
        let ok = || ConsumerOptions::default();
        assert!(Consumer::new("http://127.0.0.1:50051", "app", ["s"], ok()).is_ok());
        assert_eq!(kind(Consumer::new("http://127.0.0.1:50051", " ", ["s"], ok())), ErrorKind::InvalidArgument);
        assert_eq!(
            kind(Consumer::new("http://127.0.0.1:50051", "app", Vec::<String>::new(), ok())),
            ErrorKind::InvalidArgument
        );
        assert_eq!(kind(Consumer::new("http://127.0.0.1:50051", "app", ["s", "s"], ok())), ErrorKind::InvalidArgument);
        // The server's name rules: a name longer than 256 characters is refused here already.
        let long = "s".repeat(257);
        assert_eq!(kind(Consumer::new("http://127.0.0.1:50051", &long, ["s"], ok())), ErrorKind::InvalidArgument);
        assert_eq!(kind(Consumer::new("http://127.0.0.1:50051", "app", [&long], ok())), ErrorKind::InvalidArgument);
        assert_eq!(kind(Consumer::new("not a uri", "app", ["s"], ok())), ErrorKind::InvalidArgument);
        assert_eq!(kind(Consumer::new("127.0.0.1:50051", "app", ["s"], ok())), ErrorKind::InvalidArgument);
        assert_eq!(kind(Consumer::new("ftp://127.0.0.1:50051", "app", ["s"], ok())), ErrorKind::InvalidArgument);
        let tls_on_http = ConsumerOptions { tls: Some(TlsOptions::default()), ..ok() };
        assert_eq!(
            kind(Consumer::new("http://127.0.0.1:50051", "app", ["s"], tls_on_http)),
            ErrorKind::InvalidArgument
        );
        let half_identity = ConsumerOptions {
            tls: Some(TlsOptions { client_certificate_pem: Some("cert".into()), ..Default::default() }),
            ..ok()
        };
        assert_eq!(
            kind(Consumer::new("https://127.0.0.1:50051", "app", ["s"], half_identity)),
            ErrorKind::InvalidArgument
        );
        let bad_token = ConsumerOptions { auth_token: Some("line\nbreak".into()), ..ok() };
        assert_eq!(kind(Consumer::new("http://127.0.0.1:50051", "app", ["s"], bad_token)), ErrorKind::InvalidArgument);
    }

    #[tokio::test]
    async fn a_stopped_consumer_refuses_to_run_and_an_unreachable_server_is_retried_then_reported() {
        let consumer = Consumer::new("http://127.0.0.1:50051", "app", ["s"], ConsumerOptions::default()).unwrap();
        consumer.stop();
        let handler = |_batch: crate::Batch| async { Ok::<(), crate::HandlerError>(()) };
        let err = consumer.run(handler).await.expect_err("stopped before it ran");
        assert_eq!(err.kind(), ErrorKind::Stopped, "{err}");
        assert!(err.to_string().contains("create a new one"), "{err}");

        // A port nobody listens on: two attempts, then the connection error.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let options = ConsumerOptions {
            max_reconnect_attempts: Some(2),
            reconnect_backoff: crate::BackoffSettings {
                initial: std::time::Duration::from_millis(1),
                max: std::time::Duration::from_millis(5),
            },
            ..ConsumerOptions::default()
        };
        let consumer = Consumer::new(format!("http://127.0.0.1:{port}"), "app", ["s"], options).unwrap();
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.run(handler)).await;
        let err = result.expect("bounded").expect_err("nobody listens");
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    }

    #[tokio::test]
    async fn a_run_begun_before_a_stop_ends_gracefully_and_the_checks_are_made_when_it_begins() {
        // A port nobody listens on: the stopped run must not even try to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let consumer = Arc::new(Consumer::new(&endpoint, "app", ["s"], ConsumerOptions::default()).unwrap());
        let handler: Arc<dyn Handler> = Arc::new(|_batch: crate::Batch| async { Ok::<(), crate::HandlerError>(()) });
        let run = consumer.begin(handler.clone()).expect("begins");
        let again = consumer.begin(handler.clone()).expect_err("one run at a time");
        assert_eq!(again.kind(), ErrorKind::InvalidArgument, "{again}");
        drop(run);
        // Dropped unfinished: free to begin again. Stopped before its first poll: Ok.
        let run = consumer.begin(handler.clone()).expect("begins after a dropped run");
        consumer.stop();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), run.finish()).await;
        result.expect("at once").expect("a stop after begin ends the run gracefully");
        let err = consumer.begin(handler).expect_err("stopped before it began");
        assert_eq!(err.kind(), ErrorKind::Stopped, "{err}");
    }

    #[tokio::test]
    async fn with_default_options_a_wrong_endpoint_fails_instead_of_retrying_forever() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let consumer =
            Consumer::new(format!("http://127.0.0.1:{port}"), "app", ["s"], ConsumerOptions::default()).unwrap();
        let handler = |_batch: crate::Batch| async { Ok::<(), crate::HandlerError>(()) };
        let result = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.run(handler)).await;
        let err = result.expect("gives up within the initial attempts").expect_err("nobody listens");
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    }
}
