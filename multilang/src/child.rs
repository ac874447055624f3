//! The thin process layer: one child process per shard lease, line-delimited JSON on
//! its stdin/stdout, its stderr forwarded to `tracing` with the shard id.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tracing::{info, warn};

use crate::protocol::ToChild;

/// Who a child works for, for its log lines and environment.
#[derive(Clone, Debug)]
pub struct ChildLabel {
    /// The app.
    pub app: String,
    /// The stream.
    pub stream: String,
    /// The shard id.
    pub shard: String,
}

/// A running record processor.
pub struct Child {
    process: tokio::process::Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The process id (0 once reaped).
    pub pid: u32,
}

impl Child {
    /// Starts `command` (program and arguments) in `workdir`, with the shard in its
    /// environment (`KINESIS_BUTLER_SHARD_ID`, `KINESIS_BUTLER_STREAM`,
    /// `KINESIS_BUTLER_APP`), in a process group of its own (a terminal's Ctrl-C reaches
    /// the runner, which stops the children in order), killed if dropped.
    pub fn spawn(command: &[String], workdir: Option<&Path>, label: &ChildLabel) -> std::io::Result<Self> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "executableName is empty"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("KINESIS_BUTLER_SHARD_ID", &label.shard)
            .env("KINESIS_BUTLER_STREAM", &label.stream)
            .env("KINESIS_BUTLER_APP", &label.app)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(dir) = workdir {
            cmd.current_dir(dir);
        }
        let mut process = cmd.spawn()?;
        let pid = process.id().unwrap_or(0);
        let stdin = process.stdin.take();
        let stdout = process.stdout.take().expect("piped stdout");
        let stderr = process.stderr.take().expect("piped stderr");
        tokio::spawn(forward_stderr(stderr, label.clone(), pid));
        Ok(Self { process, stdin, stdout: BufReader::new(stdout).lines(), pid })
    }

    /// Writes one message.
    pub async fn send(&mut self, message: &ToChild) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| std::io::Error::other("stdin is closed"))?;
        stdin.write_all(message.to_line().as_bytes()).await?;
        stdin.flush().await
    }

    /// The next line of stdout; `None` at its end (the child exited or closed it).
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        self.stdout.next_line().await
    }

    /// How the child exited, waiting up to `wait` for it (after its stdout ended).
    pub async fn exit_within(&mut self, wait: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(wait, self.process.wait()).await.ok().and_then(Result::ok)
    }

    /// Closes stdin (the child's signal to end), waits up to `grace` for it to exit,
    /// then kills it. Returns how it ended.
    pub async fn close(mut self, grace: Duration) -> Option<ExitStatus> {
        drop(self.stdin.take());
        match tokio::time::timeout(grace, self.process.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                warn!(pid = self.pid, ?grace, "the child did not exit after its stdin was closed; killing it");
                self.kill().await
            }
        }
    }

    /// Kills the child and reaps it.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.process.start_kill();
        self.process.wait().await.ok()
    }
}

/// Forwards the child's stderr to the log, a line at a time; text without a newline
/// (kclpy's sample writes such) is logged once nothing more arrived for 200 ms or 8 KiB
/// piled up.
async fn forward_stderr(mut stderr: tokio::process::ChildStderr, label: ChildLabel, pid: u32) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let emit = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches(['\r', '\n']);
        if !text.is_empty() {
            info!(app = %label.app, stream = %label.stream, shard = %label.shard, pid, stderr = %text, "child stderr");
        }
    };
    loop {
        let read = if pending.is_empty() {
            stderr.read(&mut chunk).await
        } else {
            match tokio::time::timeout(Duration::from_millis(200), stderr.read(&mut chunk)).await {
                Ok(read) => read,
                Err(_) => {
                    emit(&pending);
                    pending.clear();
                    continue;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                    emit(&pending[..at]);
                    pending.drain(..=at);
                }
                if pending.len() >= 8192 {
                    emit(&pending);
                    pending.clear();
                }
            }
        }
    }
    emit(&pending);
}
