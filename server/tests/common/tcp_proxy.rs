//! A TCP proxy in front of a local port that can be cut (every open connection closed,
//! the listening port closed so that connects are refused) and restored on the same
//! port: a network outage between a server and its store or its Kinesis endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use anyhow::Result;

use super::{free_port, within};

pub struct Proxy {
    pub port: u16,
    up: watch::Sender<bool>,
    /// Tells whether the listener is bound (true) or closed (false), once it is so.
    listening: watch::Receiver<bool>,
    stop: CancellationToken,
    severed: Arc<AtomicU64>,
}

impl Proxy {
    /// A proxy on a free loopback port to `127.0.0.1:<target>`.
    pub async fn start(target: u16) -> Result<Self> {
        let port = free_port();
        let (up, up_rx) = watch::channel(true);
        let (listening_tx, listening) = watch::channel(false);
        let stop = CancellationToken::new();
        let severed = Arc::new(AtomicU64::new(0));
        tokio::spawn(run_proxy(port, target, up_rx, listening_tx, stop.clone(), severed.clone()));
        let proxy = Proxy { port, up, listening, stop, severed };
        proxy.wait_listening(true).await?;
        Ok(proxy)
    }

    async fn wait_listening(&self, want: bool) -> Result<()> {
        let mut rx = self.listening.clone();
        within(10, "proxy listener", rx.wait_for(|l| *l == want)).await??;
        Ok(())
    }

    /// Closes every open connection and the listening port; returns once it is closed.
    pub async fn cut(&self) -> Result<()> {
        self.up.send_replace(false);
        self.wait_listening(false).await
    }

    /// How many open connections cuts have closed so far.
    pub fn severed(&self) -> u64 {
        self.severed.load(Ordering::SeqCst)
    }

    /// Listens again on the same port; returns once it does.
    pub async fn restore(&self) -> Result<()> {
        self.up.send_replace(true);
        self.wait_listening(true).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(128)
}

async fn run_proxy(
    port: u16,
    target: u16,
    mut up: watch::Receiver<bool>,
    listening: watch::Sender<bool>,
    stop: CancellationToken,
    severed: Arc<AtomicU64>,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ok = up.wait_for(|u| *u) => if ok.is_err() { return },
        }
        let listener = match bind(port) {
            Ok(l) => l,
            Err(e) => panic!("proxy cannot bind 127.0.0.1:{port} again: {e}"),
        };
        listening.send_replace(true);
        let cut = stop.child_token();
        loop {
            tokio::select! {
                _ = cut.cancelled() => break,
                _ = up.wait_for(|u| !*u) => break,
                accepted = listener.accept() => {
                    let Ok((client, _)) = accepted else { continue };
                    tokio::spawn(relay(client, target, cut.clone(), severed.clone()));
                }
            }
        }
        cut.cancel();
        drop(listener);
        listening.send_replace(false);
    }
}

async fn relay(mut client: TcpStream, target: u16, cut: CancellationToken, severed: Arc<AtomicU64>) {
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    tokio::select! {
        _ = cut.cancelled() => {
            severed.fetch_add(1, Ordering::SeqCst);
        }
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
    }
}
