//! Real Redis servers for cluster tests: a standalone `redis-server` or a 3-master Redis
//! Cluster, each on free loopback ports, without persistence, killed (and their scratch
//! directories removed) on drop.
//!
//! Std-only, so both the e2e crate and the signaling crate's integration tests (which include
//! this file by path) can use it.

#![allow(dead_code, unreachable_pub)] // Shared by two test crates; neither uses every tool.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (bound, then released).
fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 0");
    listener.local_addr().expect("addr").port()
}

fn scratch_dir(tag: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sig-redis-{}-{tag}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Sends one inline command over RESP and returns the raw reply (enough for PING/DBSIZE).
fn inline(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[], "standalone")
    }

    fn start_with(extra: &[String], tag: &str) -> Self {
        let port = free_tcp_port();
        let dir = scratch_dir(tag, port);
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
        ];
        args.extend_from_slice(extra);
        let mut server = Self {
            child: None,
            port,
            dir,
            args,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server; scripts/test.sh does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if inline(self.port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Runs `redis-cli -p PORT args...` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Whether `redis-cli args` answers anything but nil or an empty string: the field
    /// (`HGET`) or member (`ZSCORE`) it asks for is there.
    pub fn answers(&self, args: &[&str]) -> bool {
        !self.cli(args).is_empty()
    }

    /// The number of keys (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        self.cli(&["DBSIZE"]).parse().unwrap_or(u64::MAX)
    }

    /// Every key, sorted (`KEYS *`: test data sets are small).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--raw", "KEYS", "*"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }

    /// Freezes the server (SIGSTOP): it neither answers nor closes connections, like a
    /// partition.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Kills the server (its data is gone) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server, waits `down`, and starts it again empty on the same port.
    pub fn restart_empty_after(&mut self, down: Duration) {
        self.kill();
        std::thread::sleep(down);
        self.spawn();
    }

    /// Saves the data (`SAVE`), kills the server, waits `down`, and starts it again on the
    /// same port from the saved data: a Redis restarted with persistence.
    pub fn restart_from_saved_data(&mut self, down: Duration) {
        assert_eq!(self.cli(&["SAVE"]), "OK");
        self.kill();
        std::thread::sleep(down);
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A Redis Cluster of three masters and no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub fn start() -> Self {
        Self::with_masters(3)
    }

    /// A Redis Cluster of `masters` (1, or 3 or more: `redis-cli --cluster create` wants 3);
    /// one master holds every slot itself.
    pub fn with_masters(masters: usize) -> Self {
        assert!(masters == 1 || masters >= 3, "1, or 3 or more masters");
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                // The bus port must be given: port + 10000 can be past 65535.
                let bus = free_tcp_port();
                let extra = [
                    "--cluster-enabled".to_owned(),
                    "yes".into(),
                    "--cluster-port".into(),
                    bus.to_string(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ];
                RedisServer::start_with(&extra, "cluster")
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        if let [only] = nodes.as_slice() {
            assert_eq!(only.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]), "OK");
        } else {
            testkit::run_ok(
                Command::new("redis-cli")
                    .args(["--cluster", "create"])
                    .args(&addrs)
                    .args(["--cluster-replicas", "0", "--cluster-yes"]),
                "redis-cli --cluster create",
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return Self { nodes };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Redis Cluster never reached cluster_state:ok");
    }

    /// The seed URLs, comma-separated (what `--redis` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keys over every master.
    pub fn dbsize(&self) -> u64 {
        self.nodes.iter().map(RedisServer::dbsize).sum()
    }
}
