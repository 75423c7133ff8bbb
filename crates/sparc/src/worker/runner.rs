//! Running one job: the skill's command as a child process (no shell), with the job's
//! parameters in its environment, a time limit, and the first 64 KiB of its stdout and
//! stderr kept as the run's output and error.

use std::future::Future;
use std::os::unix::process::ExitStatusExt as _;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;

use super::config::{PASSWORD_VAR, Skill};

/// How much of each of stdout and stderr is kept, in bytes. The API takes at most 65,536
/// characters of output and of error; a character is at least a byte, so this always fits.
pub const CAPTURE_BYTES: usize = 64 * 1024;
/// The longest `error` the API takes, in characters.
const MAX_ERROR_CHARS: usize = 65_536;
/// How long the pipes are still read once the child has ended: a grandchild that kept them
/// open must not hold up the report.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// How a run ended, as the activity report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit status 0.
    Success,
    /// A non-zero exit status, a signal, or a command that could not start.
    Failed,
    /// Killed at its time limit.
    Timeout,
    /// Killed because the worker was stopping.
    Cancelled,
}

impl Status {
    /// The status's name in `POST /agents/activity`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// The start of stdout (at most [`CAPTURE_BYTES`] of it, lossily decoded).
    pub output: String,
    /// Why it did not succeed: the start of stderr and a last line with the reason.
    pub error: Option<String>,
    pub duration: Duration,
}

impl Outcome {
    /// A run that never started a process.
    pub fn failed(error: String) -> Self {
        Self {
            status: Status::Failed,
            output: String::new(),
            error: Some(error),
            duration: Duration::ZERO,
        }
    }
}

/// The variables a job adds to its command's environment: `SPARC_EXECUTION_ID`,
/// `SPARC_TASK_ID`, `SPARC_SKILL`, `SPARC_PARAMS` (the whole JSON) and, for each top-level key
/// of an object `params`, `SPARC_PARAM_<KEY>` (see [`param_var`]): a string as is, any other
/// value as JSON. Keys that map to one name: the later in key order wins.
pub fn job_env(
    execution_id: &str,
    task_id: &str,
    skill: &str,
    params: &Value,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("SPARC_EXECUTION_ID".to_owned(), execution_id.to_owned()),
        ("SPARC_TASK_ID".to_owned(), task_id.to_owned()),
        ("SPARC_SKILL".to_owned(), skill.to_owned()),
        ("SPARC_PARAMS".to_owned(), params.to_string()),
    ];
    if let Value::Object(members) = params {
        env.extend(members.iter().map(|(key, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (param_var(key), text)
        }));
    }
    env
}

/// `SPARC_PARAM_` and the key in upper case, with every character outside `[A-Z0-9_]` made
/// `_` so that any key gives a name a shell can read.
pub fn param_var(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| c.to_ascii_uppercase())
        .map(|c| {
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("SPARC_PARAM_{name}")
}

/// Runs `skill`'s command with `env` added to the environment, for at most `limit`, or until
/// `cancel` resolves. The child is killed at the limit, on cancel, and if this future is
/// dropped. Never fails: a command that cannot start is a [`Status::Failed`] outcome.
pub async fn run(
    skill: &Skill,
    env: &[(String, String)],
    limit: Duration,
    cancel: impl Future<Output = ()>,
) -> Outcome {
    let (program, args) = skill
        .command
        .split_first()
        .expect("the configuration refuses an empty command");
    let mut command = Command::new(program);
    command
        .args(args)
        // The worker's own credentials are not the skill's business.
        .env_remove(PASSWORD_VAR)
        .envs(&skill.env)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process group of its own: ctrl-c in a terminal (or `timeout`, or a supervisor
        // signalling the group) reaches the worker only, which then lets the job finish
        // within its grace period instead of seeing it killed at once.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &skill.working_dir {
        command.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return Outcome::failed(format!("could not start {program:?}: {error}")),
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (ended, duration) = {
        let mut pipes =
            pin!(async { tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err)) });
        let mut pipes_closed = false;
        let ended = {
            let mut waited = pin!(async {
                tokio::select! {
                    status = child.wait() => End::Exited(status),
                    () = tokio::time::sleep(limit) => End::TimedOut,
                    () = cancel => End::Cancelled,
                }
            });
            loop {
                tokio::select! {
                    ended = &mut waited => break ended,
                    _ = &mut pipes, if !pipes_closed => pipes_closed = true,
                }
            }
        };
        let duration = started.elapsed();
        if !matches!(ended, End::Exited(_)) {
            // Should this fail, `kill_on_drop` tries again when `child` goes.
            let _ = child.kill().await;
        }
        if !pipes_closed {
            let _ = tokio::time::timeout(PIPE_GRACE, &mut pipes).await;
        }
        (ended, duration)
    };
    let output = decode(&out);
    let stderr = decode(&err);
    let (status, reason) = match ended {
        End::Exited(Ok(exit)) if exit.success() => (Status::Success, None),
        End::Exited(Ok(exit)) => (Status::Failed, Some(describe_exit(exit))),
        End::Exited(Err(error)) => (
            Status::Failed,
            Some(format!("could not wait for the command: {error}")),
        ),
        End::TimedOut => (
            Status::Timeout,
            Some(format!("timed out after {} s", limit.as_secs())),
        ),
        End::Cancelled => (
            Status::Cancelled,
            Some("cancelled: the worker was stopping".to_owned()),
        ),
    };
    Outcome {
        status,
        output,
        error: reason.map(|reason| error_text(&stderr, &reason)),
        duration,
    }
}

/// How the wait for a child ended.
enum End {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Keeps the first [`CAPTURE_BYTES`] of `pipe` in `kept` and reads the rest to the end, so a
/// child writing more never blocks on a full pipe. A read error ends the reading.
async fn drain(mut pipe: impl AsyncRead + Unpin, kept: &mut Vec<u8>) {
    let mut buffer = [0u8; 8192];
    while let Ok(read @ 1..) = pipe.read(&mut buffer).await {
        let room = CAPTURE_BYTES - kept.len();
        kept.extend_from_slice(&buffer[..read.min(room)]);
    }
}

/// `bytes` as text: a character cut by the capture limit is left out, other invalid UTF-8
/// becomes U+FFFD, and so does U+0000, which the API refuses in any string.
fn decode(bytes: &[u8]) -> String {
    let whole = if bytes.len() == CAPTURE_BYTES {
        without_cut_character(bytes)
    } else {
        bytes
    };
    String::from_utf8_lossy(whole).replace('\0', "\u{FFFD}")
}

/// `bytes` without a UTF-8 sequence that starts in its last three bytes and is not complete.
fn without_cut_character(bytes: &[u8]) -> &[u8] {
    for back in 1..=bytes.len().min(3) {
        let start = bytes.len() - back;
        let needed = match bytes[start] {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            // A continuation byte: the sequence starts further back.
            0x80..=0xBF => continue,
            _ => return bytes,
        };
        return if back < needed {
            &bytes[..start]
        } else {
            bytes
        };
    }
    bytes
}

fn describe_exit(exit: ExitStatus) -> String {
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended with {exit}"),
    }
}

/// The start of stderr, then `reason` on a line of its own; stderr is shortened so that the
/// whole stays within what the API takes.
fn error_text(stderr: &str, reason: &str) -> String {
    let stderr = stderr.trim_end();
    if stderr.is_empty() {
        return reason.to_owned();
    }
    let room = MAX_ERROR_CHARS - reason.chars().count() - 1;
    let cut = stderr
        .char_indices()
        .nth(room)
        .map_or(stderr.len(), |(i, _)| i);
    format!("{}\n{reason}", &stderr[..cut])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    fn skill(command: &[&str]) -> Skill {
        Skill {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            working_dir: None,
            timeout: None,
            env: BTreeMap::new(),
        }
    }

    async fn run_for(skill: &Skill, env: &[(String, String)], limit: Duration) -> Outcome {
        run(skill, env, limit, std::future::pending()).await
    }

    async fn run_simply(command: &[&str]) -> Outcome {
        run_for(&skill(command), &[], Duration::from_secs(20)).await
    }

    #[tokio::test]
    async fn a_command_s_stdout_and_exit_status_zero_make_a_success() {
        let outcome = run_simply(&["echo", "hello"]).await;
        assert_eq!(outcome.status, Status::Success);
        assert_eq!(outcome.output, "hello\n");
        assert_eq!(outcome.error, None);
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_with_stderr_and_the_exit_status() {
        let outcome = run_simply(&["sh", "-c", "echo partial; echo broken >&2; exit 3"]).await;
        assert_eq!(outcome.status, Status::Failed);
        assert_eq!(outcome.output, "partial\n");
        assert_eq!(outcome.error.as_deref(), Some("broken\nexit status 3"));
    }

    #[tokio::test]
    async fn a_child_killed_by_a_signal_fails_naming_the_signal() {
        let outcome = run_simply(&["sh", "-c", "kill -9 $$"]).await;
        assert_eq!(outcome.status, Status::Failed);
        assert_eq!(outcome.error.as_deref(), Some("killed by signal 9"));
    }

    #[tokio::test]
    async fn output_beyond_64_kib_is_cut_and_the_child_still_runs_to_its_end() {
        // About 590 KB: far more than a pipe holds, so the child ends only if the pipe is
        // drained past the limit.
        let outcome = run_simply(&["seq", "1", "100000"]).await;
        assert_eq!(outcome.status, Status::Success);
        assert_eq!(outcome.output.len(), CAPTURE_BYTES);
        assert!(outcome.output.starts_with("1\n2\n3\n"));
    }

    #[tokio::test]
    async fn invalid_utf8_is_decoded_lossily_within_the_limit() {
        let outcome = run_simply(&["head", "-c", "200000", "/dev/urandom"]).await;
        assert_eq!(outcome.status, Status::Success);
        assert!(outcome.output.chars().count() <= CAPTURE_BYTES);
        assert!(outcome.output.contains('\u{FFFD}'));
        assert!(!outcome.output.contains('\0'));
    }

    #[test]
    fn a_character_cut_by_the_limit_is_left_out_and_nul_is_replaced() {
        let mut bytes = vec![b'a'; CAPTURE_BYTES - 1];
        bytes.push(0xC3); // the first byte of 'é'
        assert_eq!(decode(&bytes), "a".repeat(CAPTURE_BYTES - 1));
        let mut whole = vec![b'a'; CAPTURE_BYTES - 2];
        whole.extend_from_slice("é".as_bytes());
        assert!(decode(&whole).ends_with('é'));
        assert_eq!(decode(b"a\0b\xFFc"), "a\u{FFFD}b\u{FFFD}c");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_child() {
        let started = Instant::now();
        let outcome = run_for(&skill(&["sleep", "30"]), &[], Duration::from_secs(1)).await;
        assert_eq!(outcome.status, Status::Timeout);
        assert_eq!(outcome.error.as_deref(), Some("timed out after 1 s"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_cancel_kills_the_child() {
        let started = Instant::now();
        let cancel = tokio::time::sleep(Duration::from_millis(200));
        let outcome = run(
            &skill(&["sleep", "30"]),
            &[],
            Duration::from_secs(60),
            cancel,
        )
        .await;
        assert_eq!(outcome.status, Status::Cancelled);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_command_runs_without_a_shell() {
        let outcome = run_simply(&["echo", "$HOME", "*", "a;b"]).await;
        assert_eq!(outcome.output, "$HOME * a;b\n");
    }

    #[tokio::test]
    async fn params_become_environment_variables() {
        let params = json!({"name": "world", "max-count": 3, "tags": ["a"]});
        let env = job_env("e-1", "t-1", "greet", &params);
        let command = skill(&[
            "printenv",
            "SPARC_PARAM_NAME",
            "SPARC_PARAM_MAX_COUNT",
            "SPARC_PARAM_TAGS",
            "SPARC_PARAMS",
            "SPARC_EXECUTION_ID",
            "SPARC_TASK_ID",
            "SPARC_SKILL",
        ]);
        let outcome = run_for(&command, &env, Duration::from_secs(20)).await;
        assert_eq!(outcome.status, Status::Success);
        let printed: Vec<&str> = outcome.output.lines().collect();
        assert_eq!(
            printed,
            [
                "world",
                "3",
                "[\"a\"]",
                params.to_string().as_str(),
                "e-1",
                "t-1",
                "greet"
            ]
        );
    }

    #[test]
    fn param_keys_become_upper_case_names_of_letters_digits_and_underscores() {
        assert_eq!(param_var("name"), "SPARC_PARAM_NAME");
        assert_eq!(param_var("max-count.v2"), "SPARC_PARAM_MAX_COUNT_V2");
        assert_eq!(param_var("größe"), "SPARC_PARAM_GR__E");
    }

    #[tokio::test]
    async fn the_skill_s_working_dir_and_env_apply() {
        let mut command = skill(&["sh", "-c", "pwd; printenv GREETING"]);
        command.working_dir = Some(PathBuf::from("/"));
        command.env.insert("GREETING".to_owned(), "hi".to_owned());
        let outcome = run_for(&command, &[], Duration::from_secs(20)).await;
        assert_eq!(outcome.output, "/\nhi\n");
    }

    /// The process group (`pgrp`) and the process id in a `/proc/<pid>/stat` line.
    fn group_and_pid(stat: &str) -> (String, String) {
        let pid = stat.split_whitespace().next().unwrap().to_owned();
        // After the command name in parentheses: state, parent, process group.
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        let group = after_name.split_whitespace().nth(2).unwrap().to_owned();
        (group, pid)
    }

    #[tokio::test]
    async fn the_command_runs_in_a_process_group_of_its_own() {
        let outcome = run_simply(&["cat", "/proc/self/stat"]).await;
        let (child_group, child_pid) = group_and_pid(&outcome.output);
        let ours = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (our_group, _) = group_and_pid(&ours);
        assert_eq!(child_group, child_pid);
        assert_ne!(child_group, our_group);
    }

    #[tokio::test]
    async fn a_missing_program_fails_with_the_os_error() {
        let outcome = run_simply(&["sparc-no-such-program", "x"]).await;
        assert_eq!(outcome.status, Status::Failed);
        let error = outcome.error.expect("a failure has an error");
        assert!(
            error.contains("could not start \"sparc-no-such-program\""),
            "{error}"
        );
        assert!(error.contains("No such file or directory"), "{error}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's `Jail` closure returns its own large error
    fn the_worker_password_is_not_passed_to_the_command() {
        // The jail sets the variable for this process and removes it afterwards.
        figment::Jail::expect_with(|jail| {
            jail.set_env(PASSWORD_VAR, "hunter2");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime should start");
            let outcome = runtime.block_on(run_simply(&["printenv", PASSWORD_VAR]));
            assert_eq!(outcome.status, Status::Failed);
            assert!(!outcome.output.contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn an_error_stays_within_what_the_api_takes_and_ends_with_the_reason() {
        let stderr = "x".repeat(CAPTURE_BYTES);
        let error = error_text(&stderr, "exit status 1");
        assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
        assert!(error.ends_with("x\nexit status 1"));
    }
}
