//! A project binary running inside one of the topology's namespaces, with its stdout and
//! stderr collected line by line (bounded) so a test can wait for a line and show the logs
//! when something fails. Killed by PID on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use e2e::netns::{Host, Topology};
use e2e::{ChildGuard, bin_path, wait_until};

/// Lines kept per stream; older ones are dropped (a chatty binary cannot eat the memory).
const MAX_LINES: usize = 4000;

type Lines = Arc<Mutex<Vec<String>>>;

/// A running binary with collected output.
pub(super) struct NsProcess {
    /// The label used in messages, e.g. `relay@srv`.
    pub(super) label: String,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
    /// Declared last: dropped (killed and reaped) after the fields above, which is harmless,
    /// and the readers end when the pipes close.
    guard: ChildGuard,
}

impl NsProcess {
    /// Starts workspace binary `name` with `args` inside `host`, with piped stdin.
    pub(super) fn spawn(topo: &Topology, host: Host, name: &str, args: &[String]) -> Self {
        Self::spawn_program(topo, host, bin_path(name), args)
    }

    /// Starts `program` (a path, or a name looked up in `PATH`) with `args` inside `host`.
    pub(super) fn spawn_program(
        topo: &Topology,
        host: Host,
        program: impl AsRef<std::path::Path>,
        args: &[String],
    ) -> Self {
        let program = program.as_ref();
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut cmd = topo.command(host, program);
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let label = format!("{name}@{host:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let stdout = Lines::default();
        let stderr = Lines::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, Arc::clone(&stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, Arc::clone(&stderr)));
        }
        Self {
            label,
            stdin: child.stdin.take(),
            stdout,
            stderr,
            readers,
            guard: ChildGuard { child, name },
        }
    }

    /// Waits up to `timeout` for a stdout line for which `pick` returns `Some`; scans every
    /// line collected so far each time.
    pub(super) fn wait_stdout<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        wait_until(timeout, || {
            let lines = self.stdout.lock().unwrap_or_else(|p| p.into_inner());
            lines.iter().find_map(|l| pick(l))
        })
    }

    /// A snapshot of the stdout lines collected so far.
    pub(super) fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes one line to the process's stdin.
    pub(super) fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Whether the process has exited (and its status).
    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.guard.child.try_wait().ok().flatten()
    }

    /// Everything collected so far, for a failure message.
    pub(super) fn logs(&self) -> String {
        let out = self.stdout.lock().unwrap_or_else(|p| p.into_inner());
        let err = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let tail = |v: &[String]| v[v.len().saturating_sub(200)..].join("\n");
        format!(
            "===== {} (pid {}) stdout:\n{}\n===== {} stderr (last 200 lines):\n{}\n",
            self.label,
            self.guard.pid(),
            tail(&out),
            self.label,
            tail(&err)
        )
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, lines: Lines) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
            if lines.len() >= MAX_LINES {
                lines.remove(0);
            }
            lines.push(line);
        }
    })
}
