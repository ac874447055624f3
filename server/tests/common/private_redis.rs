//! A `redis-server` of one test only, on a port of its own, killed on drop. Either
//! ephemeral (nothing on disk) or persistent (append-only file, fsync on every write),
//! so that a real restart — the process stopped, a new one started on the same port
//! with the same directory — keeps every lease and checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::TcpStream;

use super::{free_port, within};

pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl PrivateRedis {
    /// On a free port; keeps nothing on disk (a restart loses everything).
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::launch(free_port(), dir, false).await
    }

    /// On a free port, with an append-only file in `dir` fsynced on every write: a
    /// restart (`stop`/`kill` then `restart`) keeps every acknowledged write.
    pub async fn start_persistent(dir: &Path) -> Result<Self> {
        Self::launch(free_port(), dir, true).await
    }

    async fn launch(port: u16, dir: &Path, persistent: bool) -> Result<Self> {
        let mut redis = PrivateRedis { port, dir: dir.to_owned(), persistent, child: None };
        redis.spawn().await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn spawn(&mut self) -> Result<()> {
        let persistence: &[&str] = if self.persistent {
            &["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("spawning redis-server (is it on PATH?)")?;
        let child = self.child.insert(child);
        let port = self.port;
        within(10, "redis-server to accept connections", async {
            loop {
                if let Some(status) = child.try_wait()? {
                    bail!("redis-server exited: {status}");
                }
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (Redis flushes its append-only file and exits) and reap; SIGKILL if it
    /// has not exited within 10 s.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().context("kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM redis-server failed: {status}");
        }
        let exited = within(10, "redis-server to exit on SIGTERM", async {
            loop {
                if child.try_wait()?.is_some() {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited?
    }

    /// Starts a new `redis-server` on the same port with the same directory (after
    /// `stop` or `kill`).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
