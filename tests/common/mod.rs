//! Shared harness for ringcache's integration tests.
//!
//! * [`Server`]: a `ringcache serve` child process, ready once its stderr says so.
//! * [`DemoOrigin`]: a `ringcache origin` child process with its request counters.
//! * [`TestOrigin`]: a scriptable origin inside the test process that sees raw bytes.
//! * [`Client`]: a minimal HTTP/1.1 client over one `TcpStream`.
//!
//! Every network wait and every process wait here is bounded; nothing blocks
//! longer than [`IO_TIMEOUT`] (network) or [`READY_DEADLINE`] (start-up).
//! Child processes are signalled by PID only and get `SIGKILL` from the kernel
//! if the test thread that started them dies (`PR_SET_DEATHSIG`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server gets to print its ready line.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Default bound for one network exchange (connect, one response).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a process gets between SIGTERM and SIGKILL when a test ends.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Generates `mod NAME { fn uring(); fn epoll(); }` calling `NAME(io)` for each
/// scenario function `fn NAME(io: &str)`.
#[macro_export]
macro_rules! both_io {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn uring() {
                    super::$name("uring")
                }
                #[test]
                fn epoll() {
                    super::$name("epoll")
                }
            }
        )*
    };
}

/// Path of the binary under test; `RINGCACHE_TEST_BIN` overrides it (e.g. a release build).
pub fn bin() -> PathBuf {
    match std::env::var_os("RINGCACHE_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_ringcache")),
    }
}

/// A `RINGCACHE_*` variable that sets configuration (not the test's own
/// switches nor the log filter).
pub fn is_config_env(name: &str) -> bool {
    name.starts_with("RINGCACHE_")
        && !matches!(
            name,
            "RINGCACHE_TEST_BIN" | "RINGCACHE_LOG" | "RINGCACHE_TRACES" | "RINGCACHE_RESTART_DIR"
        )
}

/// Poll `cond` every 20 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh temporary directory for one test's files; removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcache-itest-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            tag
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Write `name` with `text` inside the directory and return its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Which stream of the child a captured line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Captured {
    lines: Vec<(Stream, String)>,
    stdout_eof: bool,
    stderr_eof: bool,
}

#[derive(Default)]
struct Capture {
    state: Mutex<Captured>,
    changed: Condvar,
}

/// Why waiting for a line ended without finding it.
#[derive(Debug, PartialEq, Eq)]
enum LineWait {
    /// The stream(s) searched reached end of file.
    Eof,
    Timeout,
}

/// A child process whose stdout and stderr are captured line by line (and
/// echoed to the test's stderr with a prefix).
pub struct Proc {
    child: Option<Child>,
    pid: i32,
    label: String,
    capture: Arc<Capture>,
    args: Vec<String>,
}

impl Proc {
    /// Spawn the ringcache binary with `args`. Panics only if it cannot be executed.
    pub fn spawn(label: &str, args: &[&str]) -> Proc {
        Proc::spawn_bin(&bin(), label, args)
    }

    /// Spawn the program `program` with `args`.
    pub fn spawn_bin(program: &Path, label: &str, args: &[&str]) -> Proc {
        Proc::spawn_bin_stdin(program, label, args, Stdio::null())
    }

    /// [`Proc::spawn_bin`] with `stdin` as the child's standard input (a way
    /// to hand it a socket, e.g. a listener for socket activation).
    pub fn spawn_bin_stdin(program: &Path, label: &str, args: &[&str], stdin: Stdio) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Settings in the environment must not leak into a test.
        for var in [
            "RINGCACHE_LISTEN",
            "RINGCACHE_ORIGIN",
            "RINGCACHE_ADMIN",
            "RINGCACHE_WORKERS",
            "RINGCACHE_IO",
            "RINGCACHE_MEMORY",
            "RINGCACHE_CONFIG",
            "RINGCACHE_STORE",
            "NOTIFY_SOCKET",
        ] {
            cmd.env_remove(var);
        }
        // Every configuration key has a RINGCACHE_* variable.
        for (var, _) in std::env::vars_os() {
            if var.to_str().is_some_and(is_config_env) {
                cmd.env_remove(var);
            }
        }
        // SAFETY: the closure runs in the child between fork and exec and only
        // calls prctl(2), which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot execute {}: {e}", program.display()));
        let pid = child.id() as i32;
        let capture = Arc::new(Capture::default());
        let tag = format!("{label} {pid}");
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        spawn_reader(out, Stream::Stdout, tag.clone(), capture.clone());
        spawn_reader(err, Stream::Stderr, tag, capture.clone());
        Proc {
            child: Some(child),
            pid,
            label: label.to_string(),
            capture,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines(Some(Stream::Stderr))
    }

    /// Has a stderr line so far contained `needle`?
    pub fn logged(&self, needle: &str) -> bool {
        self.stderr_lines().iter().any(|l| l.contains(needle))
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines(Some(Stream::Stdout))
    }

    fn lines(&self, which: Option<Stream>) -> Vec<String> {
        let st = self.capture.state.lock().unwrap();
        st.lines
            .iter()
            .filter(|(s, _)| stream_matches(which, *s))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Everything captured so far, for failure messages.
    pub fn transcript(&self) -> String {
        let st = self.capture.state.lock().unwrap();
        let mut s = String::new();
        for (stream, line) in &st.lines {
            let tag = match stream {
                Stream::Stdout => "out",
                Stream::Stderr => "err",
            };
            s.push_str(&format!("  [{tag}] {line}\n"));
        }
        if s.is_empty() {
            s.push_str("  (nothing)\n");
        }
        s
    }

    /// Wait for a line containing `needle` on `which` (None: either stream).
    fn wait_line(
        &self,
        which: Option<Stream>,
        needle: &str,
        within: Duration,
    ) -> Result<String, LineWait> {
        let deadline = Instant::now() + within;
        let mut st = self.capture.state.lock().unwrap();
        loop {
            if let Some((_, l)) = st
                .lines
                .iter()
                .find(|(s, l)| stream_matches(which, *s) && l.contains(needle))
            {
                return Ok(l.clone());
            }
            let eof = match which {
                Some(Stream::Stderr) => st.stderr_eof,
                Some(Stream::Stdout) => st.stdout_eof,
                None => st.stderr_eof && st.stdout_eof,
            };
            if eof {
                return Err(LineWait::Eof);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LineWait::Timeout);
            }
            st = self
                .capture
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Non-blocking: the exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Wait up to `within` for the process to exit, and then (briefly) for
    /// its output to be captured to the end, so that a line the process
    /// wrote just before exiting is in `lines` when this returns.
    pub fn wait_timeout(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.try_wait() {
                self.wait_output_end(Duration::from_secs(2));
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait up to `within` for end of file on both captured streams.
    fn wait_output_end(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut st = self.capture.state.lock().unwrap();
        while !(st.stdout_eof && st.stderr_eof) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .capture
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Send `sig` to the process (by PID), unless it has already been reaped.
    pub fn signal(&mut self, sig: i32) {
        if self.child.is_some() && self.try_wait().is_none() {
            // SAFETY: kill(2) on the PID of our own unreaped child; no memory involved.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_timeout(grace) {
            return st;
        }
        eprintln!(
            "[{} {}] still running {grace:?} after SIGTERM; sending SIGKILL",
            self.label, self.pid
        );
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{} {} survives SIGKILL", self.label, self.pid))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate(KILL_GRACE);
            self.child = None;
        }
    }
}

fn stream_matches(which: Option<Stream>, s: Stream) -> bool {
    match which {
        Some(w) => w == s,
        None => true,
    }
}

fn spawn_reader<R: Read + Send + 'static>(r: R, which: Stream, tag: String, cap: Arc<Capture>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    eprintln!("[{tag}] {line}");
                    cap.state.lock().unwrap().lines.push((which, line));
                    cap.changed.notify_all();
                }
            }
        }
        let mut st = cap.state.lock().unwrap();
        match which {
            Stream::Stdout => st.stdout_eof = true,
            Stream::Stderr => st.stderr_eof = true,
        }
        drop(st);
        cap.changed.notify_all();
    });
}

/// Value of `key=VALUE` (VALUE ends at whitespace) inside `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    let rest = &line[at..];
    Some(rest.split_whitespace().next().unwrap_or(""))
}

/// How `Server::try_start` failed.
#[derive(Debug)]
pub enum StartError {
    /// The process exited before printing its ready line.
    Exited { status: String, transcript: String },
    /// No ready line within the deadline; the process has been killed.
    Timeout {
        deadline: Duration,
        transcript: String,
    },
    /// A ready line that could not be parsed.
    BadReadyLine { line: String },
}

/// A running `ringcache serve`.
pub struct Server {
    pub proc: Proc,
    /// Traffic listener.
    pub addr: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
    /// The whole ready line.
    pub ready_line: String,
}

/// Is `program` on PATH (it answers `-v`)? Prints the skip reason when not.
pub fn installed(program: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg("-v")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipped: {program} is not installed");
    }
    ok
}

impl Server {
    /// Spawn `ringcache ARGS...` (args include the `serve` subcommand) and wait
    /// for its ready line; panics with the captured stderr when it fails.
    pub fn start(args: &[&str]) -> Server {
        match Server::try_start(args) {
            Ok(s) => s,
            Err(e) => panic!("{}", describe_start_error(&bin(), args, &e)),
        }
    }

    /// Like [`Server::start`] but reports failure instead of panicking.
    pub fn try_start(args: &[&str]) -> Result<Server, StartError> {
        Server::try_start_with(&bin(), args, READY_DEADLINE)
    }

    /// [`Server::try_start`] with another program and readiness deadline
    /// (the harness's own tests use stand-ins for the binary).
    pub fn try_start_with(
        program: &Path,
        args: &[&str],
        deadline: Duration,
    ) -> Result<Server, StartError> {
        Server::wait_ready(Proc::spawn_bin(program, "ringcache", args), deadline)
    }

    /// Wait up to `deadline` for a started process's ready line.
    pub fn wait_ready(mut proc: Proc, deadline: Duration) -> Result<Server, StartError> {
        match proc.wait_line(Some(Stream::Stderr), "ready: listen=", deadline) {
            Ok(line) => {
                let addr = field(&line, "listen=").and_then(|s| s.parse().ok());
                let admin = field(&line, "admin=").and_then(|s| s.parse().ok());
                match (addr, admin) {
                    (Some(addr), Some(admin)) => Ok(Server {
                        proc,
                        addr,
                        admin,
                        ready_line: line,
                    }),
                    _ => Err(StartError::BadReadyLine { line }),
                }
            }
            Err(LineWait::Eof) => {
                // stderr closed: the process is exiting; collect its status.
                let status = match proc.wait_timeout(Duration::from_secs(2)) {
                    Some(st) => describe_status(st),
                    None => "stderr closed but the process is still running".to_string(),
                };
                Err(StartError::Exited {
                    status,
                    transcript: proc.transcript(),
                })
            }
            Err(LineWait::Timeout) => {
                proc.terminate(Duration::from_secs(1));
                Err(StartError::Timeout {
                    deadline,
                    transcript: proc.transcript(),
                })
            }
        }
    }

    /// Start `ringcache serve` on ephemeral ports with `--io io --workers workers`,
    /// `--origin origin` when given, then `extra`. Returns `None` (after printing
    /// why) when `io` is `uring` and the server exits saying io_uring is unavailable.
    pub fn serve(io: &str, origin: Option<&str>, workers: usize, extra: &[&str]) -> Option<Server> {
        let args = serve_args(io, origin, workers, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_or_skip(&bin(), io, &refs, READY_DEADLINE)
    }

    /// [`Server::serve`] with a configuration file holding `toml`; the
    /// returned directory keeps the file alive as long as the server.
    pub fn serve_with_config(
        io: &str,
        origin: Option<&str>,
        workers: usize,
        toml: &str,
    ) -> Option<(TempDir, Server)> {
        let (dir, cfg) = config_file(toml);
        let server = Server::serve(io, origin, workers, &["--config", cfg.to_str().unwrap()])?;
        Some((dir, server))
    }

    /// Start `program ARGS...`; `None` when `io` is `uring` and the process
    /// exited before ready with "io_uring" in its output; panics otherwise.
    pub fn start_or_skip(
        program: &Path,
        io: &str,
        args: &[&str],
        deadline: Duration,
    ) -> Option<Server> {
        match Server::try_start_with(program, args, deadline) {
            Ok(s) => Some(s),
            Err(StartError::Exited { transcript, .. })
                if io == "uring" && transcript.contains("io_uring") =>
            {
                println!("SKIPPED: io_uring is unavailable here; the server said:\n{transcript}");
                eprintln!("SKIPPED: io_uring is unavailable here");
                None
            }
            Err(e) => panic!("{}", describe_start_error(program, args, &e)),
        }
    }

    /// Start `ringcache ARGS...` as the service manager would with socket
    /// activation: `listener` becomes fd 3, `LISTEN_FDS=1`,
    /// `LISTEN_FDNAMES=fd_name`, `LISTEN_PID` its own PID (a shell puts the
    /// socket in place and execs the binary, so the PID stays). The listener
    /// stays open in the test process too, as systemd keeps it. `None` as
    /// in [`Server::start_or_skip`].
    pub fn serve_inheriting(
        io: &str,
        listener: &TcpListener,
        fd_name: &str,
        args: &[String],
    ) -> Option<Server> {
        let script = format!(
            "exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES={fd_name} exec \"$0\" \"$@\""
        );
        let mut argv = vec!["-c".to_string(), script, bin().display().to_string()];
        argv.extend(args.iter().cloned());
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let copy = listener
            .try_clone()
            .expect("duplicate the listening socket");
        let sh = Path::new("/bin/sh");
        let proc = Proc::spawn_bin_stdin(sh, "ringcache", &refs, Stdio::from(OwnedFd::from(copy)));
        match Server::wait_ready(proc, READY_DEADLINE) {
            Ok(s) => Some(s),
            Err(StartError::Exited { transcript, .. })
                if io == "uring" && transcript.contains("io_uring") =>
            {
                println!("SKIPPED: io_uring is unavailable here; the server said:\n{transcript}");
                eprintln!("SKIPPED: io_uring is unavailable here");
                None
            }
            Err(e) => panic!("{}", describe_start_error(sh, &refs, &e)),
        }
    }

    /// `http://ADDR` of the traffic listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new client connection to the traffic listener.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// `GET path` on a fresh connection.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        http_get(self.addr, path)
    }

    /// One call on the admin listener, on a fresh connection: `METHOD path`
    /// with `fields` (each line ending in CRLF) and `body`.
    pub fn admin_call(&self, method: &str, path: &str, fields: &str, body: &str) -> Response {
        let mut c = Client::connect(self.admin);
        c.send(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: admin\r\n{fields}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        c.read_response()
    }

    /// `POST path` on the admin listener with the bearer `token`.
    pub fn admin_post(&self, path: &str, token: &str, body: &str) -> Response {
        self.admin_call(
            "POST",
            path,
            &format!("Authorization: Bearer {token}\r\n"),
            body,
        )
    }

    /// Scrape `/metrics` on the admin listener.
    pub fn metrics(&self) -> Metrics {
        let r = http_get(self.admin, "/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.summary());
        Metrics::parse(&r.body_str())
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.proc.stderr_lines()
    }

    /// Has a stderr line so far contained `needle`?
    pub fn logged(&self, needle: &str) -> bool {
        self.proc.logged(needle)
    }

    /// Send SIGTERM without waiting.
    pub fn sigterm(&mut self) {
        self.proc.signal(libc::SIGTERM);
    }

    /// Wait up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(within)
    }

    /// SIGTERM and wait for the exit (SIGKILL after 15 s: the default drain grace plus slack).
    pub fn stop(mut self) -> ExitStatus {
        self.proc.terminate(Duration::from_secs(15))
    }
}

/// Arguments of `ringcache serve` on ephemeral ports.
pub fn serve_args(io: &str, origin: Option<&str>, workers: usize, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        &workers.to_string(),
        "--io",
        io,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(o) = origin {
        v.push("--origin".into());
        v.push(o.into());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn describe_status(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// The panic message for a failed start.
pub fn describe_start_error(program: &Path, args: &[&str], e: &StartError) -> String {
    let cmd = format!("{} {}", program.display(), args.join(" "));
    match e {
        StartError::Exited { status, transcript } => format!(
            "ringcache exited ({status}) before printing `ready: listen=` on stderr\n\
             command: {cmd}\noutput:\n{transcript}"
        ),
        StartError::Timeout {
            deadline,
            transcript,
        } => format!(
            "ringcache printed no `ready: listen=` line on stderr within {deadline:?} \
             (killed)\ncommand: {cmd}\noutput:\n{transcript}"
        ),
        StartError::BadReadyLine { line } => format!(
            "cannot parse listen=/admin= addresses in the ready line {line:?}\ncommand: {cmd}"
        ),
    }
}

/// Run `ringcache ARGS...` to completion (bounded by `within`; killed beyond it).
pub fn run(args: &[&str], within: Duration) -> (ExitStatus, Vec<String>) {
    let mut p = Proc::spawn("ringcache", args);
    let st = match p.wait_timeout(within) {
        Some(st) => st,
        None => {
            let st = p.terminate(Duration::from_secs(1));
            panic!(
                "ringcache {} did not finish within {within:?} ({st:?})\n{}",
                args.join(" "),
                p.transcript()
            );
        }
    };
    // Let the reader threads collect the last lines.
    let _ = p.wait_line(
        Some(Stream::Stderr),
        "\u{0}never\u{0}",
        Duration::from_secs(2),
    );
    (st, p.stderr_lines())
}

/// A running `ringcache origin` (the demo origin).
pub struct DemoOrigin {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// Counters reported by the demo origin's `/__origin/stats`.
#[derive(Clone, Debug, Default)]
pub struct OriginStats {
    pub total: u64,
    pub by_path: HashMap<String, u64>,
}

impl OriginStats {
    /// Requests seen for `path` (0 when absent).
    pub fn path(&self, path: &str) -> u64 {
        self.by_path.get(path).copied().unwrap_or(0)
    }
}

impl DemoOrigin {
    pub fn start() -> DemoOrigin {
        let args = ["origin", "--listen", "127.0.0.1:0"];
        let mut proc = Proc::spawn("demo-origin", &args);
        let needle = "demo origin listening on http://";
        let line = match proc.wait_line(None, needle, READY_DEADLINE) {
            Ok(l) => l,
            Err(LineWait::Eof) => {
                let status = proc
                    .wait_timeout(Duration::from_secs(2))
                    .map_or("still running".to_string(), describe_status);
                panic!(
                    "`ringcache origin` exited ({status}) before printing {needle:?}\n\
                     output:\n{}",
                    proc.transcript()
                )
            }
            Err(LineWait::Timeout) => {
                proc.terminate(Duration::from_secs(1));
                panic!(
                    "`ringcache origin` printed no {needle:?} line within {READY_DEADLINE:?} \
                     (killed)\noutput:\n{}",
                    proc.transcript()
                )
            }
        };
        let at = line.find(needle).unwrap() + needle.len();
        let hostport: String = line[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect();
        let addr = hostport
            .parse()
            .unwrap_or_else(|_| panic!("cannot parse the demo origin address in {line:?}"));
        DemoOrigin { proc, addr }
    }

    /// `http://ADDR`, for `--origin`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /__origin/stats`, parsed.
    pub fn stats(&self) -> OriginStats {
        let r = http_get(self.addr, "/__origin/stats");
        assert_eq!(r.status, 200, "GET /__origin/stats: {}", r.summary());
        parse_stats(&r.body_str())
            .unwrap_or_else(|| panic!("cannot parse origin stats {:?}", r.body_str()))
    }

    /// Requests the origin has seen for `path`.
    pub fn count(&self, path: &str) -> u64 {
        self.stats().path(path)
    }
}

/// Scan `{"requests": N, "by_path": {"/p": n, ...}}` without a JSON library.
pub fn parse_stats(s: &str) -> Option<OriginStats> {
    let total = json_number_after(s, "\"requests\"")?;
    let mut by_path = HashMap::new();
    if let Some(at) = s.find("\"by_path\"") {
        let rest = &s[at + "\"by_path\"".len()..];
        let open = rest.find('{')?;
        let close = rest[open..].find('}')? + open;
        let mut obj = &rest[open + 1..close];
        while let Some(q) = obj.find('"') {
            let after = &obj[q + 1..];
            let endq = after.find('"')?;
            let key = after[..endq].to_string();
            let tail = &after[endq + 1..];
            let colon = tail.find(':')?;
            let digits: String = tail[colon + 1..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            by_path.insert(key, digits.parse().ok()?);
            obj = &tail[colon + 1..];
        }
    }
    Some(OriginStats { total, by_path })
}

fn json_number_after(s: &str, key: &str) -> Option<u64> {
    let at = s.find(key)? + key.len();
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The numeric `"id"` in a demo origin body (`"id": 7` or `"id":"7"`).
pub fn body_id(body: &[u8]) -> Option<u64> {
    let s = String::from_utf8_lossy(body);
    let at = s.find("\"id\"")? + 4;
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// A scrape of Prometheus text: `(series with labels, value)`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub series: Vec<(String, f64)>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The value follows the last space outside the label set.
            let split = match line.rfind('}') {
                Some(b) => line[b..].find(' ').map(|i| b + i),
                None => line.find(' '),
            };
            if let Some(i) = split {
                let name = line[..i].trim().to_string();
                let value = line[i..].split_whitespace().next().unwrap_or("");
                if let Ok(v) = value.parse::<f64>() {
                    series.push((name, v));
                }
            }
        }
        Metrics {
            series,
            text: text.to_string(),
        }
    }

    /// Sum of every series of metric `name` (any labels); `None` if absent.
    pub fn get(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for (s, v) in &self.series {
            let base = s.split('{').next().unwrap_or(s);
            if base == name {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Like [`Metrics::get`] but 0 when absent.
    pub fn value(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(0.0)
    }

    /// The series `name{...}` whose label set contains `label` (e.g. `kind="timeout"`).
    pub fn labelled(&self, name: &str, label: &str) -> f64 {
        self.series
            .iter()
            .filter(|(s, _)| {
                s.split('{').next() == Some(name)
                    && s.find('{').is_some_and(|b| s[b..].contains(label))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A parsed HTTP/1.1 response.
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// Header fields in order, names as received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The body was delimited by the connection closing.
    pub close_delimited: bool,
}

/// Header lookups shared by [`Response`] and the scripted origin's [`Request`].
pub trait Fields {
    /// Header lines as (name, value), in order.
    fn fields(&self) -> &[(String, String)];

    /// First value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.fields()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    fn headers_all(&self, name: &str) -> Vec<&str> {
        self.fields()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

impl Fields for Response {
    fn fields(&self) -> &[(String, String)] {
        &self.headers
    }
}

impl Fields for Request {
    fn fields(&self) -> &[(String, String)] {
        &self.headers
    }
}

impl Response {
    /// `Cache-Status`, or "" when absent.
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    /// Whether `Cache-Status` says hit.
    /// The parameters of ringcache's Cache-Status entry, in order, without
    /// the cache name: `["fwd=uri-miss", "fwd-status=200", "stored"]`.
    pub fn cache_status_params(&self) -> Vec<String> {
        let cs = self.cache_status();
        let mut parts = cs.split(';').map(|p| p.trim().to_string());
        assert_eq!(
            parts.next().as_deref(),
            Some("ringcache"),
            "{}",
            self.summary()
        );
        parts.collect()
    }

    pub fn is_hit(&self) -> bool {
        self.cache_status()
            .split(';')
            .any(|p| p.trim().eq_ignore_ascii_case("hit"))
    }

    /// `Age` as integer seconds, if present.
    pub fn age(&self) -> Option<u64> {
        self.header("age").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("Age is not an integer: {v:?}"))
        })
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether `Connection` lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers_all("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// One line for assertion messages: status, headers, body size.
    pub fn summary(&self) -> String {
        let hs: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        let body = if self.body.len() <= 200 {
            format!("{:?}", self.body_str())
        } else {
            format!("{} bytes", self.body.len())
        };
        format!(
            "{} {} [{}] body {body}",
            self.status,
            self.reason,
            hs.join("; ")
        )
    }
}

/// How a connection ended when a test waited for the peer to close it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly close (read returned 0) after these extra bytes.
    Eof(Vec<u8>),
    /// Reset by the peer after these extra bytes.
    Reset(Vec<u8>),
}

/// A minimal HTTP/1.1 client on one connection. All reads are bounded by
/// `timeout` (default [`IO_TIMEOUT`]) per response.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub timeout: Duration,
}

impl Client {
    /// Connect (bounded by [`IO_TIMEOUT`]); panics on failure.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        match Client::try_connect(addr) {
            Ok(c) => c,
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            timeout: IO_TIMEOUT,
        })
    }

    /// Write all of `bytes`; panics on failure.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("send {} bytes: {e}", bytes.len());
        }
    }

    /// Write all of `bytes`, reporting failure.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send `GET path` (keep-alive) and read the response.
    #[track_caller]
    pub fn get(&mut self, path: &str) -> Response {
        self.send(get_request(path).as_bytes());
        self.read_response()
    }

    /// Read one response whose body is framed by its headers; panics on failure.
    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        match self.try_read_response() {
            Ok(r) => r,
            Err(e) => panic!("reading a response: {e}"),
        }
    }

    /// Read the response to a HEAD request (headers only).
    #[track_caller]
    pub fn read_head_response(&mut self) -> Response {
        match self.try_read(false) {
            Ok(r) => r,
            Err(e) => panic!("reading a HEAD response: {e}"),
        }
    }

    pub fn try_read_response(&mut self) -> io::Result<Response> {
        self.try_read(true)
    }

    /// Bytes received but not yet consumed by a parsed response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Receive until at least `n` bytes are buffered (see [`Client::leftover`]);
    /// false when the connection ends or the client's timeout passes first.
    pub fn wait_bytes(&mut self, n: usize) -> bool {
        let deadline = Instant::now() + self.timeout;
        while self.buf.len() < n {
            match self.fill(deadline) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }

    fn try_read(&mut self, body_allowed: bool) -> io::Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill(deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end).collect();
        let mut resp = parse_response_head(&head)?;
        if (100..200).contains(&resp.status) {
            // Interim response: the final one follows.
            return self.try_read(body_allowed);
        }
        if !body_allowed || resp.status == 204 || resp.status == 304 {
            return Ok(resp);
        }
        let te = resp
            .header("transfer-encoding")
            .map(str::to_ascii_lowercase);
        if te.as_deref().is_some_and(|t| t.contains("chunked")) {
            resp.chunked = true;
            resp.body = self.read_chunked(deadline)?;
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
            while self.buf.len() < n {
                if self.fill(deadline)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("body cut at {} of {n} bytes", self.buf.len()),
                    ));
                }
            }
            resp.body = self.buf.drain(..n).collect();
        } else {
            resp.close_delimited = true;
            while self.fill(deadline)? != 0 {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_chunked(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(deadline)?;
            let size_s = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_s, 16)
                .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailer fields until an empty line.
                while !self.read_line(deadline)?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                if self.fill(deadline)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunk",
                    ));
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(bad("chunk not followed by CRLF".into()));
            }
            self.buf.drain(..size + 2);
        }
    }

    fn read_line(&mut self, deadline: Instant) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.fill(deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside chunked framing",
                ));
            }
        }
    }

    /// One read into the buffer, bounded by `deadline`; Ok(0) at end of stream.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete response within {:?}; buffered {:?}",
                    self.timeout,
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no complete response within {:?}; buffered {:?}",
                            self.timeout,
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait up to `within` for the peer to close the connection. `Err` carries
    /// what arrived meanwhile when it stays open.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Closed, Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut extra = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 16 << 10];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(extra);
            }
            let _ = self
                .stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Closed::Eof(extra)),
                Ok(n) => extra.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(extra)
                }
                Err(_) => return Ok(Closed::Reset(extra)),
            }
        }
    }

    /// Panic unless the peer closes the connection within `within` with no
    /// further bytes.
    #[track_caller]
    pub fn assert_closed(&mut self, within: Duration, what: &str) {
        match self.wait_closed(within) {
            Ok(Closed::Eof(extra)) | Ok(Closed::Reset(extra)) => assert!(
                extra.is_empty(),
                "{what}: unexpected bytes before the close: {:?}",
                String::from_utf8_lossy(&extra)
            ),
            Err(extra) => panic!(
                "{what}: connection still open after {within:?} (received {:?})",
                String::from_utf8_lossy(&extra)
            ),
        }
    }

    /// Half-close our sending side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// `GET path HTTP/1.1` with a Host header, keep-alive.
pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: ringcache.test\r\n\r\n")
}

/// `GET path` on a fresh connection.
#[track_caller]
pub fn http_get(addr: SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.get(path)
}

/// `n` clients at once, each on its own connection and thread, `GET path`;
/// their answers, in the order the clients were started.
pub fn http_get_concurrently(addr: SocketAddr, path: &str, n: usize) -> Vec<Response> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || http_get(addr, &path))
        })
        .collect();
    clients
        .into_iter()
        .map(|c| c.join().expect("a client thread"))
        .collect()
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_response_head(head: &[u8]) -> io::Result<Response> {
    let text = std::str::from_utf8(head).map_err(|_| bad("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1.x status line: {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok(Response {
        version,
        status,
        reason,
        headers,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------
// Scriptable origin
// ---------------------------------------------------------------------------

/// A request as a [`TestOrigin`] received it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Head and body exactly as received.
    pub raw: Vec<u8>,
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// 0-based number of the connection it came on (accept order).
    pub conn: u64,
    /// 0-based number of the request on its connection.
    pub seq_on_conn: u64,
    /// 0-based number of the request on this origin.
    pub seq: u64,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Header lines as text, for assertion messages.
    pub fn head_text(&self) -> String {
        let end = find(&self.raw, b"\r\n\r\n").map_or(self.raw.len(), |i| i);
        String::from_utf8_lossy(&self.raw[..end]).into_owned()
    }
}

/// What a [`TestOrigin`] does with one request.
pub enum Reply {
    /// Write these bytes; keep the connection for more requests.
    Send(Vec<u8>),
    /// Write these bytes, then close the connection (e.g. a close-delimited body).
    SendClose(Vec<u8>),
    /// Close the connection without answering.
    Drop,
    /// Never answer; hold the connection until the peer closes it or the origin stops.
    Hang,
    /// Wait, then do the inner reply.
    After(Duration, Box<Reply>),
    /// Write these bytes (part of an answer, say), then do the inner reply.
    Then(Vec<u8>, Box<Reply>),
    /// Wait until the flag is set (or the origin stops), then do the inner reply.
    Until(Arc<AtomicBool>, Box<Reply>),
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync + 'static;

struct OriginState {
    stop: AtomicBool,
    requests: AtomicU64,
    connections: AtomicU64,
    /// Connections open now, and the most ever open at once.
    connections_open: AtomicU64,
    connections_peak: AtomicU64,
    /// Requests received and not yet answered now, and the most at once.
    requests_active: AtomicU64,
    requests_peak: AtomicU64,
    log: Mutex<Vec<Request>>,
    handler: Box<Handler>,
}

/// An origin server in the test process, answering with whatever bytes the
/// handler returns. It counts connections and requests and keeps every request.
pub struct TestOrigin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

impl TestOrigin {
    /// Listen on 127.0.0.1:0; one thread per connection calls `handler` per request.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> TestOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test origin");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState {
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_peak: AtomicU64::new(0),
            requests_active: AtomicU64::new(0),
            requests_peak: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            handler: Box::new(handler),
        });
        let st = state.clone();
        let accept_thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = st.connections.fetch_add(1, Ordering::SeqCst);
                let open = st.connections_open.fetch_add(1, Ordering::SeqCst) + 1;
                st.connections_peak.fetch_max(open, Ordering::SeqCst);
                let st2 = st.clone();
                thread::spawn(move || {
                    let _open = Held(&st2.connections_open);
                    serve_origin_conn(conn, n, &st2)
                });
            }
        });
        TestOrigin {
            addr,
            state,
            accept_thread: Some(accept_thread),
        }
    }

    /// An origin answering every request with `200`, `body` and `Cache-Control: cc`.
    pub fn fixed(cc: &'static str, body: &'static str) -> TestOrigin {
        TestOrigin::start(move |_| {
            Reply::Send(response(
                200,
                &[("Cache-Control", cc), ("Content-Type", "text/plain")],
                body.as_bytes(),
            ))
        })
    }

    /// `http://ADDR`, for `--origin`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Complete requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once (counted from accept
    /// until the origin sees the connection end).
    pub fn connections_peak(&self) -> u64 {
        self.state.connections_peak.load(Ordering::SeqCst)
    }

    /// The most requests that were in progress at once (from the complete
    /// request until its reply is written or the connection dropped).
    pub fn requests_peak(&self) -> u64 {
        self.state.requests_peak.load(Ordering::SeqCst)
    }

    /// The most recent request received.
    pub fn last_request(&self) -> Option<Request> {
        self.state.log.lock().unwrap().last().cloned()
    }

    /// Every request received, in arrival order.
    pub fn all_requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    /// Wait up to `within` for at least `n` requests to have arrived.
    pub fn wait_requests(&self, n: u64, within: Duration) -> bool {
        wait_until(within, || self.requests() >= n)
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// Decrements its counter when dropped: one open connection or active request.
struct Held<'a>(&'a AtomicU64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_origin_conn(mut s: TcpStream, conn: u64, st: &OriginState) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf: Vec<u8> = Vec::new();
    let mut seq_on_conn = 0;
    loop {
        let req = loop {
            if st.stop.load(Ordering::SeqCst) {
                return;
            }
            match parse_request(&buf) {
                Ok(Some((mut req, used))) => {
                    buf.drain(..used);
                    req.conn = conn;
                    req.seq_on_conn = seq_on_conn;
                    break req;
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("[test-origin] unparseable request ({e}); closing");
                    return;
                }
            }
            let mut chunk = [0u8; 16 << 10];
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        };
        seq_on_conn += 1;
        let mut req = req;
        req.seq = st.requests.fetch_add(1, Ordering::SeqCst);
        st.log.lock().unwrap().push(req.clone());
        let active = st.requests_active.fetch_add(1, Ordering::SeqCst) + 1;
        st.requests_peak.fetch_max(active, Ordering::SeqCst);
        // Released before the last bytes of the reply are written: by the
        // time the client has the whole answer (and may reuse or replace
        // the connection), this request no longer counts as in progress.
        let mut active = Some(Held(&st.requests_active));
        let mut reply = (st.handler)(&req);
        loop {
            match reply {
                Reply::After(d, inner) => {
                    sleep_unless_stopped(d, st);
                    reply = *inner;
                }
                Reply::Then(bytes, inner) => {
                    if s.write_all(&bytes).is_err() {
                        return;
                    }
                    reply = *inner;
                }
                Reply::Until(flag, inner) => {
                    while !flag.load(Ordering::SeqCst) && !st.stop.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(5));
                    }
                    reply = *inner;
                }
                Reply::Send(bytes) => {
                    active.take();
                    if s.write_all(&bytes).is_err() {
                        return;
                    }
                    break;
                }
                Reply::SendClose(bytes) => {
                    active.take();
                    let _ = s.write_all(&bytes);
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
                Reply::Drop => {
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
                Reply::Hang => {
                    // Hold the socket, discarding input, until the peer or the test ends.
                    let mut sink = [0u8; 4096];
                    while !st.stop.load(Ordering::SeqCst) {
                        match s.read(&mut sink) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e)
                                if e.kind() == io::ErrorKind::WouldBlock
                                    || e.kind() == io::ErrorKind::TimedOut
                                    || e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return,
                        }
                    }
                    return;
                }
            }
        }
    }
}

fn sleep_unless_stopped(d: Duration, st: &OriginState) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && !st.stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(10).min(deadline - Instant::now()));
    }
}

/// Parse one complete request at the start of `buf`: `Ok(None)` when more
/// bytes are needed, else the request and the bytes it used.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let rl = lines.next().unwrap_or("");
    let mut parts = rl.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/") {
        return Err(format!("bad request line {rl:?}"));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method,
        target,
        version,
        headers,
        ..Default::default()
    };
    let te_chunked = req
        .headers_all("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut at = head_end;
    if te_chunked {
        req.chunked = true;
        loop {
            let Some(le) = find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let line = String::from_utf8_lossy(&buf[at..at + le]).into_owned();
            let size_s = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_s, 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            at += le + 2;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let Some(le) = find(&buf[at..], b"\r\n") else {
                        return Ok(None);
                    };
                    at += le + 2;
                    if le == 0 {
                        break;
                    }
                }
                break;
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            req.body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    } else if let Some(cl) = req.header("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        if buf.len() < at + n {
            return Ok(None);
        }
        req.body = buf[at..at + n].to_vec();
        at += n;
    }
    req.raw = buf[..at].to_vec();
    Ok(Some((req, at)))
}

/// Raw response bytes with a Content-Length (added unless `headers` has one).
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    v
}

/// Raw response bytes with `Transfer-Encoding: chunked`, one chunk per slice.
pub fn chunked_response(status: u16, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    let mut v = out.into_bytes();
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

/// Raw response bytes with neither Content-Length nor chunking: the body
/// ends when the connection closes (send with [`Reply::SendClose`]).
pub fn close_delimited_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    v
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A TCP port on 127.0.0.1 with nothing listening (bound, then released).
pub fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Write `text` as a TOML file in a fresh temp dir (kept alive by the returned guard).
pub fn config_file(text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("cfg");
    let p = dir.write("ringcache.toml", text);
    (dir, p)
}
