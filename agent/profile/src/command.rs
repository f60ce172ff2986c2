//! Running an external tool, one way for every caller (the builder's mksquashfs, sfdisk, mke2fs, mtools and
//! qemu-img; later the agent's modprobe, systemctl and k8s).
//!
//! The tool gets an explicit environment: `PATH`, `LC_ALL=C` and only what the caller adds, never the caller's
//! whole environment (a stray `SOURCE_DATE_EPOCH` makes mksquashfs refuse its own time options, and a locale
//! changes the messages). Its stdin is nothing, a file, bytes, a reader or the caller's writer; its stdout nothing,
//! a file or captured. The last bytes of its stderr are kept, and a failure is a [`CommandError`] naming the tool,
//! the command line, the exit status and that tail. Blocking, std only: the static agent uses it too.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ExitStatus, Stdio};
use std::thread::JoinHandle;

/// How much of a tool's stderr is kept: its last bytes.
pub const STDERR_TAIL: usize = 4096;

/// Where tools are looked for when the caller has no `PATH` of its own (PID 1 starts with none).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command line, as a failure shows it: each argument shell-quoted when it needs to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        Ok(())
    }
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{tool} is not installed{}", package_hint(.package.as_deref()))]
    NotFound {
        tool: String,
        package: Option<String>,
    },
    #[error("running {invocation}: {source}")]
    Spawn {
        tool: String,
        invocation: Invocation,
        source: io::Error,
    },
    #[error("{tool}: its input {}: {source}", path.display())]
    Stdin {
        tool: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{tool}: its output {}: {source}", path.display())]
    Stdout {
        tool: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{tool}: writing its input: {source}\n  command: {invocation}")]
    Feed {
        tool: String,
        invocation: Invocation,
        source: io::Error,
    },
    #[error("{tool} failed ({status}){}\n  command: {invocation}", stderr_suffix(.stderr))]
    Failed {
        tool: String,
        invocation: Invocation,
        status: ExitStatus,
        /// The tail of its stderr, trimmed.
        stderr: String,
    },
}

impl CommandError {
    /// The tool's name, whatever went wrong.
    pub fn tool(&self) -> &str {
        match self {
            CommandError::NotFound { tool, .. }
            | CommandError::Spawn { tool, .. }
            | CommandError::Stdin { tool, .. }
            | CommandError::Stdout { tool, .. }
            | CommandError::Feed { tool, .. }
            | CommandError::Failed { tool, .. } => tool,
        }
    }
}

fn package_hint(package: Option<&str>) -> String {
    package
        .map(|p| format!(" (it comes with the {p} package)"))
        .unwrap_or_default()
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// What a tool that succeeded left.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Its stdout when captured ([`Command::capture_stdout`]), else empty.
    pub stdout: Vec<u8>,
    /// The tail of its stderr (warnings), trimmed.
    pub stderr: String,
}

enum Input {
    Null,
    /// Written by the caller ([`Command::run_with_stdin`]) or by `run` from bytes or a reader.
    Piped,
    File(PathBuf),
    Bytes(Vec<u8>),
    Reader(Box<dyn Read + Send>),
}

enum Sink {
    Null,
    File(PathBuf),
    Capture,
}

/// One run of a tool, described then run once.
pub struct Command {
    invocation: Invocation,
    tool: String,
    env: Vec<(OsString, OsString)>,
    package: Option<String>,
    stdin: Input,
    stdout: Sink,
}

impl Command {
    /// The tool `program` (a name looked up in `PATH`, or a path), no arguments, stdin and stdout empty.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        let program = program.as_ref().to_os_string();
        let tool = Path::new(&program)
            .file_name()
            .unwrap_or(&program)
            .to_string_lossy()
            .into_owned();
        Command {
            invocation: Invocation {
                program,
                args: Vec::new(),
            },
            tool,
            env: Vec::new(),
            package: None,
            stdin: Input::Null,
            stdout: Sink::Null,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Command {
        self.invocation.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.invocation
            .args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Adds a variable to the tool's environment (besides `PATH` and `LC_ALL=C`; a later one replaces them).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Command {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// The caller's whole environment too, for a tool of the system the caller runs on: the agent's `k8s`, whose
    /// unit environment is the node's own and which the distribution's command may read.
    pub fn inherit_env(mut self) -> Command {
        self.env.extend(std::env::vars_os());
        self
    }

    /// The package that provides the tool, named when it is not installed.
    pub fn package(mut self, package: impl Into<String>) -> Command {
        self.package = Some(package.into());
        self
    }

    pub fn stdin_file(mut self, path: impl Into<PathBuf>) -> Command {
        self.stdin = Input::File(path.into());
        self
    }

    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Command {
        self.stdin = Input::Bytes(bytes.into());
        self
    }

    pub fn stdin_reader(mut self, reader: impl Read + Send + 'static) -> Command {
        self.stdin = Input::Reader(Box::new(reader));
        self
    }

    /// Sends stdout to `path` (created, or truncated).
    pub fn stdout_file(mut self, path: impl Into<PathBuf>) -> Command {
        self.stdout = Sink::File(path.into());
        self
    }

    /// Keeps stdout, whole, in [`Output::stdout`].
    pub fn capture_stdout(mut self) -> Command {
        self.stdout = Sink::Capture;
        self
    }

    pub fn tool(&self) -> &str {
        &self.tool
    }

    pub fn invocation(&self) -> &Invocation {
        &self.invocation
    }

    /// Runs the tool to its end; an exit status other than success is an error.
    pub fn run(mut self) -> Result<Output, CommandError> {
        let fed = match std::mem::replace(&mut self.stdin, Input::Piped) {
            Input::Bytes(bytes) => {
                self.execute(Some(|stdin: &mut ChildStdin| stdin.write_all(&bytes)))
            }
            Input::Reader(mut reader) => self.execute(Some(|stdin: &mut ChildStdin| {
                io::copy(&mut reader, stdin).map(drop)
            })),
            other => {
                self.stdin = other;
                self.execute(None::<fn(&mut ChildStdin) -> io::Result<()>>)
            }
        };
        let (tool, invocation, fed, output) = fed?;
        match fed {
            Some(Err(source)) => Err(CommandError::Feed {
                tool,
                invocation,
                source,
            }),
            _ => Ok(output),
        }
    }

    /// Runs the tool with its stdin written by `feed`; the tool sees the end of its input when `feed` returns. A
    /// failing tool is reported first (a write error then is only its consequence); otherwise `feed`'s own result
    /// comes back, for the caller to judge.
    pub fn run_with_stdin<T>(
        mut self,
        feed: impl FnOnce(&mut ChildStdin) -> T,
    ) -> Result<(T, Output), CommandError> {
        self.stdin = Input::Piped;
        let (tool, invocation, fed, output) = self.execute(Some(feed))?;
        match fed {
            Some(t) => Ok((t, output)),
            None => Err(CommandError::Spawn {
                tool,
                invocation,
                source: io::Error::other("no stdin to write to"),
            }),
        }
    }

    /// Spawns, feeds a piped stdin through `feed`, drains stderr (and a captured stdout) meanwhile, waits. Returns
    /// the tool and invocation back for the callers' own errors.
    fn execute<T>(
        self,
        feed: Option<impl FnOnce(&mut ChildStdin) -> T>,
    ) -> Result<(String, Invocation, Option<T>, Output), CommandError> {
        let Command {
            invocation,
            tool,
            env,
            package,
            stdin,
            stdout,
        } = self;
        let mut cmd = std::process::Command::new(&invocation.program);
        cmd.args(&invocation.args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH")
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| DEFAULT_PATH.into()),
            )
            .env("LC_ALL", "C")
            .envs(env)
            .stderr(Stdio::piped());
        match stdin {
            Input::File(path) => {
                let file = File::open(&path).map_err(|source| CommandError::Stdin {
                    tool: tool.clone(),
                    path,
                    source,
                })?;
                cmd.stdin(file);
            }
            Input::Piped | Input::Bytes(_) | Input::Reader(_) if feed.is_some() => {
                cmd.stdin(Stdio::piped());
            }
            _ => {
                cmd.stdin(Stdio::null());
            }
        }
        match stdout {
            Sink::Null => {
                cmd.stdout(Stdio::null());
            }
            Sink::File(path) => {
                let file = File::create(&path).map_err(|source| CommandError::Stdout {
                    tool: tool.clone(),
                    path,
                    source,
                })?;
                cmd.stdout(file);
            }
            Sink::Capture => {
                cmd.stdout(Stdio::piped());
            }
        }
        let spawn_err = |source: io::Error| CommandError::Spawn {
            tool: tool.clone(),
            invocation: invocation.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                CommandError::NotFound {
                    tool: tool.clone(),
                    package: package.clone(),
                }
            } else {
                spawn_err(source)
            }
        })?;
        // Drained on threads of their own, so that a chatty tool never blocks on a full pipe while it is fed.
        let stderr = match child.stderr.take().map(|e| reader_thread(e, tail)) {
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => return Err(kill_after(&mut child, spawn_err(e))),
            None => None,
        };
        let captured = match child.stdout.take().map(|o| reader_thread(o, whole)) {
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => return Err(kill_after(&mut child, spawn_err(e))),
            None => None,
        };
        // Dropping stdin after `feed` is the end of the tool's input.
        let fed = match (child.stdin.take(), feed) {
            (Some(mut stdin), Some(feed)) => Some(feed(&mut stdin)),
            _ => None,
        };
        let status = child.wait().map_err(spawn_err)?;
        let stderr = shown_tail(&stderr.map(join).unwrap_or_default());
        let stdout = captured.map(join).unwrap_or_default().0;
        if !status.success() {
            return Err(CommandError::Failed {
                tool,
                invocation,
                status,
                stderr,
            });
        }
        Ok((tool, invocation, fed, Output { stdout, stderr }))
    }
}

fn kill_after(child: &mut std::process::Child, e: CommandError) -> CommandError {
    let _ = child.kill();
    let _ = child.wait();
    e
}

fn reader_thread<R: Read + Send + 'static>(
    r: R,
    collect: fn(R) -> (Vec<u8>, bool),
) -> io::Result<JoinHandle<(Vec<u8>, bool)>> {
    std::thread::Builder::new()
        .name("command-output".into())
        .spawn(move || collect(r))
}

fn join(h: JoinHandle<(Vec<u8>, bool)>) -> (Vec<u8>, bool) {
    h.join().unwrap_or_default()
}

/// Everything read: a captured stdout.
fn whole<R: Read>(mut r: R) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let _ = r.read_to_end(&mut out);
    (out, false)
}

/// The last [`STDERR_TAIL`] bytes read, and whether anything before them was dropped.
fn tail<R: Read>(mut r: R) -> (Vec<u8>, bool) {
    let mut kept = Vec::with_capacity(STDERR_TAIL);
    let mut dropped = false;
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                    dropped = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, dropped)
}

fn shown_tail((bytes, dropped): &(Vec<u8>, bool)) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if *dropped {
        format!("[...] {text}")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_explicit() {
        // The test process has HOME, and whatever the caller's shell exported: none of it reaches the tool.
        let out = Command::new("env")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .capture_stdout()
            .run()
            .expect("env runs");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
            .collect();
        names.sort();
        assert_eq!(names, ["E2FSPROGS_FAKE_TIME", "LC_ALL", "PATH"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("LC_ALL=C\n"));
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let e = Command::new("cairn-no-such-tool")
            .package("cairn-tools")
            .run()
            .expect_err("not installed");
        assert!(matches!(e, CommandError::NotFound { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cairn-no-such-tool is not installed (it comes with the cairn-tools package)"
        );
        let e = Command::new("/nonexistent/cairn-tool")
            .run()
            .expect_err("not installed");
        assert_eq!(e.to_string(), "cairn-tool is not installed");
    }

    #[test]
    fn a_failure_names_the_tool_the_command_its_status_and_stderr() {
        let e = Command::new("sh")
            .args(["-c", "echo first >&2; echo it broke >&2; exit 3"])
            .run()
            .expect_err("exit 3");
        let CommandError::Failed {
            tool,
            invocation,
            status,
            stderr,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(tool, "sh");
        assert_eq!(status.code(), Some(3));
        assert_eq!(stderr, "first\nit broke");
        assert_eq!(
            invocation.to_string(),
            "sh -c 'echo first >&2; echo it broke >&2; exit 3'"
        );
        assert_eq!(
            e.to_string(),
            "sh failed (exit status: 3): first\nit broke\n  command: sh -c 'echo first >&2; echo it broke >&2; exit 3'"
        );
    }

    #[test]
    fn only_the_tail_of_stderr_is_kept() {
        let e = Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 2000 ]; do echo line $i >&2; i=$((i+1)); done; exit 1",
            ])
            .run()
            .expect_err("exit 1");
        let CommandError::Failed { stderr, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(stderr.starts_with("[...] "), "{stderr}");
        assert!(stderr.ends_with("line 1999"), "{stderr}");
        assert!(stderr.len() <= STDERR_TAIL + 6, "{}", stderr.len());
        assert!(!stderr.contains("line 0\n"));
    }

    #[test]
    fn stdin_from_bytes_a_file_a_reader_or_a_writer_and_stdout_to_a_file() {
        let dir = std::env::temp_dir().join(format!("cairn-command-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let input = dir.join("in");
        std::fs::write(&input, "from a file\n").expect("write");
        let cat = || Command::new("cat").capture_stdout();
        let out = cat().stdin_bytes("bytes\n").run().expect("cat");
        assert_eq!(out.stdout, b"bytes\n");
        let out = cat().stdin_file(&input).run().expect("cat");
        assert_eq!(out.stdout, b"from a file\n");
        let out = cat()
            .stdin_reader(io::Cursor::new(vec![b'r'; 300_000]))
            .run()
            .expect("cat");
        assert_eq!(out.stdout.len(), 300_000);
        let (written, out) = cat()
            .run_with_stdin(|stdin| stdin.write_all(b"streamed\n").map(|()| 9))
            .expect("cat");
        assert_eq!(written.expect("fed"), 9);
        assert_eq!(out.stdout, b"streamed\n");
        let to = dir.join("out");
        let out = Command::new("cat")
            .stdin_bytes("to a file\n")
            .stdout_file(&to)
            .run()
            .expect("cat");
        assert!(out.stdout.is_empty());
        assert_eq!(std::fs::read(&to).expect("read"), b"to a file\n");
        let e = Command::new("cat")
            .stdin_file(dir.join("missing"))
            .run()
            .expect_err("no input");
        assert!(matches!(e, CommandError::Stdin { .. }), "{e:?}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_failing_tool_is_reported_before_a_broken_feed() {
        let e = Command::new("sh")
            .args(["-c", "echo refused >&2; exit 2"])
            .run_with_stdin(|stdin| {
                // The tool is gone: writing enough to fill the pipe fails with a broken pipe.
                (0..64).try_for_each(|_| stdin.write_all(&[0u8; 65536]))
            })
            .expect_err("exit 2");
        assert!(
            matches!(&e, CommandError::Failed { stderr, .. } if stderr == "refused"),
            "{e:?}"
        );
    }
}
