use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaks nothing.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
    /// The name used in messages.
    pub name: String,
}

impl ChildGuard {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives our binaries free ports where the test named none: a listener the test does not read
/// must not take a default port (9641, 9642, 3478) that another program on the machine may
/// want. A test's own flag or variable wins.
fn no_default_ports(program: &str, command: &mut Command) {
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let envs: Vec<String> = command
        .get_envs()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    let has_env = |key: &str| envs.iter().any(|k| k == key);
    let has_arg = |prefix: &str| args.iter().any(|a| a.starts_with(prefix));
    // `--relay-arg=--admin-listen=A` or `--relay-arg` `--admin-listen=A`.
    let relay_admin = has_arg("--relay-arg=--admin-listen")
        || args
            .windows(2)
            .any(|w| w[0] == "--relay-arg" && w[1].starts_with("--admin-listen"));
    match program {
        "signaling" => {
            if !has_env("SIGNALING_ADMIN_LISTEN") {
                command.env("SIGNALING_ADMIN_LISTEN", "127.0.0.1:0");
            }
            if has_arg("--with-relay") {
                if !has_arg("--relay-listen") && !has_env("SIGNALING_RELAY_LISTEN") {
                    command.args(["--relay-listen", "127.0.0.1:0"]);
                }
                // A `--config` file may hold the relay's flags: a flag would override them.
                if !relay_admin && !has_arg("--config") {
                    command.arg("--relay-arg=--admin-listen=127.0.0.1:0");
                }
            }
        }
        "relay" if !has_env("RELAY_ADMIN_LISTEN") => {
            command.env("RELAY_ADMIN_LISTEN", "127.0.0.1:0");
        }
        _ => {}
    }
}

/// A running binary whose stdout lines arrive on a channel (read by a thread), so a test can
/// wait for a line with a timeout; every line read is kept in [`Spawned::seen`].
#[derive(Debug)]
pub struct Spawned {
    guard: ChildGuard,
    lines: mpsc::Receiver<String>,
    /// The child's stdin, when it was asked for.
    pub stdin: Option<ChildStdin>,
    /// Every stdout line read so far, in order.
    pub seen: Vec<String>,
}

impl Spawned {
    /// Spawns `command` with stdout piped (stdin piped when `with_stdin`, otherwise null;
    /// stderr as the command says, inherited by default). Panics if it cannot start.
    pub fn spawn(mut command: Command, with_stdin: bool) -> Self {
        let name = command.get_program().to_string_lossy().into_owned();
        let name = name.rsplit('/').next().unwrap_or(&name).to_owned();
        no_default_ports(&name, &mut command);
        let mut child = command
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {name}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            guard: ChildGuard { child, name },
            lines,
            stdin,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The child, for what this type does not wrap.
    pub fn child(&mut self) -> &mut Child {
        &mut self.guard.child
    }

    /// The next line matching `pred` within `timeout`, or `None`.
    pub fn try_wait_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// The next line matching `pred`; panics with every line read if none comes in `timeout`.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.try_wait_line(timeout, pred).unwrap_or_else(|| {
            panic!(
                "{}: no matching line within {timeout:?}; got:\n{}",
                self.guard.name,
                self.seen.join("\n")
            )
        })
    }

    /// Like [`Self::wait_line`], but a line already read earlier also counts.
    pub fn wait_seen(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| pred(l)) {
            return line.clone();
        }
        self.wait_line(timeout, pred)
    }

    /// Reads lines for `period`, keeping them in [`Self::seen`].
    pub fn read_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    /// Freezes the process (SIGSTOP): it neither answers nor closes its sockets, as a hung
    /// host does, until [`Self::thaw`].
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill -{signal} {}", self.guard.name);
    }

    /// Kills the process at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
    }

    /// The exit status, if the process exits within `timeout`.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.guard.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status; panics if the process does not exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.try_wait_exit(timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.guard.name))
    }
}
