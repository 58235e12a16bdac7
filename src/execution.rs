//! One `run_python` call from request to report.
//!
//! Owns request validation (every input limit, with a message a model can act
//! on), the classification of how a run ended (status, error line, and the
//! pool [`Verdict`] for its sandbox) and the assembly of the [`RunReport`].
//! Shared by the MCP front end and the `run` subcommand so both behave alike.
//! It does not render text (that is [`crate::report`]) nor manage containers.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::metrics;
use crate::pool::{Pool, RecycleReason, Verdict};
use crate::report::{RunReport, RunStatus, decode_output, describe_signal};
use crate::sandbox::protocol::RunDone;
use crate::sandbox::{CapturedOutput, RunProxy, SandboxFailure};

/// A `run_python` request as the caller sent it.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub code: String,
    /// MCP servers the code may call (the proxy resolves them).
    pub servers: Vec<String>,
    /// Seconds; the configured default when absent.
    pub timeout_secs: Option<f64>,
}

/// The limits a request is checked against, from [`Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_code_bytes: usize,
    pub max_output_bytes: u64,
    pub memory_bytes: u64,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Self {
        Self {
            default_timeout: config.default_timeout,
            max_timeout: config.max_timeout,
            max_code_bytes: config.max_code_bytes,
            max_output_bytes: config.max_output_bytes,
            memory_bytes: config.memory_bytes,
        }
    }
}

impl Limits {
    /// The run's timeout if the request is acceptable, else why not.
    pub fn validate(
        &self,
        request: &RunRequest,
        known_servers: &[String],
    ) -> Result<Duration, String> {
        if request.code.trim().is_empty() {
            return Err("code is empty: pass the Python source to run".into());
        }
        if request.code.len() > self.max_code_bytes {
            return Err(format!(
                "code is {} bytes; the limit is {} bytes (MCP_BRIDGE_MAX_CODE_BYTES)",
                request.code.len(),
                self.max_code_bytes
            ));
        }
        if let Some(unknown) = request.servers.iter().find(|s| !known_servers.contains(s)) {
            let known = if known_servers.is_empty() {
                "none are configured".to_owned()
            } else {
                format!("known servers: {}", known_servers.join(", "))
            };
            return Err(format!("unknown MCP server {unknown:?}; {known}"));
        }
        let max = self.max_timeout.as_secs_f64();
        match request.timeout_secs {
            None => Ok(self.default_timeout),
            Some(secs) if secs.is_finite() && secs > 0.0 && secs <= max => {
                Ok(Duration::from_secs_f64(secs))
            }
            Some(secs) => Err(format!(
                "timeout must be more than 0 and at most {max} seconds (MCP_BRIDGE_MAX_TIMEOUT); got {secs}"
            )),
        }
    }
}

/// Runs requests on pooled sandboxes.
#[derive(Clone)]
pub struct Executor {
    pool: Pool,
    limits: Limits,
}

impl Executor {
    pub fn new(pool: Pool, limits: Limits) -> Self {
        Self { pool, limits }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs already validated code (see [`Limits::validate`]). Never fails:
    /// every outcome, including a broken sandbox or an exhausted pool, is a
    /// report the caller can read.
    pub async fn run(
        &self,
        code: &str,
        timeout: Duration,
        proxy: Option<RunProxy<'_>>,
    ) -> RunReport {
        let waiting = Instant::now();
        let acquired = self.pool.acquire().await;
        metrics::observe_wait(waiting.elapsed());
        let mut lease = match acquired {
            Ok(lease) => lease,
            Err(error) => return RunReport::rejected(RunStatus::Error, error.to_string()),
        };
        let mut output = CapturedOutput::default();
        let started = Instant::now();
        let result = lease
            .sandbox()
            .run(
                code,
                self.limits.max_output_bytes,
                timeout,
                proxy,
                &mut output,
            )
            .await;
        let duration = started.elapsed();
        let outcome = match result {
            Ok(done) => Outcome::from_done(&done, self.limits.memory_bytes),
            Err(failure) => {
                // The agent is PID 1: if the OOM killer took it, the engine knows.
                let oom = matches!(failure, SandboxFailure::AgentDied { .. })
                    && lease.engine_saw_oom().await;
                Outcome::from_failure(&failure, oom, &self.limits)
            }
        };
        if let Verdict::Recycle(reason) = outcome.verdict {
            tracing::info!(
                sandbox = lease.sandbox().short_id(),
                reason = reason.as_str(),
                "sandbox will be recycled"
            );
        }
        lease.finish(outcome.verdict);
        let limit = self.limits.max_output_bytes;
        RunReport {
            status: outcome.status,
            stdout: decode_output(output.stdout.bytes, output.stdout.dropped, "stdout", limit),
            stderr: decode_output(output.stderr.bytes, output.stderr.dropped, "stderr", limit),
            exit_code: outcome.exit_code,
            duration_ms: duration.as_secs_f64() * 1e3,
            stdout_truncated: output.stdout.dropped > 0,
            stderr_truncated: output.stderr.dropped > 0,
            error: outcome.error,
        }
    }
}

/// How a run ended, and what that means for its sandbox.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: RunStatus,
    exit_code: Option<i32>,
    error: Option<String>,
    verdict: Verdict,
}

impl Outcome {
    fn from_done(done: &RunDone, memory_bytes: u64) -> Self {
        let exit_code = Some(done.exit_code);
        if done.oom {
            return Self {
                status: RunStatus::Oom,
                exit_code,
                error: Some(oom_message(memory_bytes)),
                // The OOM killer may have hit more than the run; don't trust the rest.
                verdict: Verdict::Recycle(RecycleReason::Oom),
            };
        }
        let error = match done.exit_code {
            0 => None,
            code if code < 0 => Some(format!("killed by {}", describe_signal(-code))),
            code => Some(
                done.error
                    .clone()
                    .unwrap_or_else(|| format!("exited with code {code}")),
            ),
        };
        Self {
            status: if error.is_none() {
                RunStatus::Success
            } else {
                RunStatus::Error
            },
            exit_code,
            error,
            verdict: Verdict::Reuse,
        }
    }

    fn from_failure(failure: &SandboxFailure, oom: bool, limits: &Limits) -> Self {
        let (status, error) = match failure {
            _ if oom => (RunStatus::Oom, oom_message(limits.memory_bytes)),
            SandboxFailure::Timeout(limit) => (
                RunStatus::Timeout,
                format!(
                    "timed out after {} and was killed (output printed before the deadline is kept); \
                     work that needs longer can pass a larger timeout, up to {} (MCP_BRIDGE_MAX_TIMEOUT)",
                    humantime::format_duration(*limit),
                    humantime::format_duration(limits.max_timeout)
                ),
            ),
            other => (
                RunStatus::Error,
                format!("{other}; the sandbox was replaced, so running the code again is safe"),
            ),
        };
        Self {
            status,
            exit_code: None,
            error: Some(error),
            verdict: Verdict::Recycle(if oom {
                RecycleReason::Oom
            } else {
                RecycleReason::for_failure(failure)
            }),
        }
    }
}

fn oom_message(memory_bytes: u64) -> String {
    format!(
        "out of memory: the sandbox's limit is {} MiB (MCP_BRIDGE_MEMORY) and the run was killed",
        memory_bytes >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::from(&Config::default())
    }

    fn request(code: &str, timeout_secs: Option<f64>) -> RunRequest {
        RunRequest {
            code: code.into(),
            servers: vec![],
            timeout_secs,
        }
    }

    #[test]
    fn validation_messages_name_the_limit() {
        let l = limits();
        assert!(
            l.validate(&request("  \n", None), &[])
                .unwrap_err()
                .contains("empty")
        );
        let big = "x".repeat(l.max_code_bytes + 1);
        assert!(
            l.validate(&request(&big, None), &[])
                .unwrap_err()
                .contains("MCP_BRIDGE_MAX_CODE_BYTES")
        );
        for bad in [0.0, -1.0, 121.0, f64::NAN, f64::INFINITY] {
            let error = l
                .validate(&request("print(1)", Some(bad)), &[])
                .unwrap_err();
            assert!(error.contains("MCP_BRIDGE_MAX_TIMEOUT"), "{bad}: {error}");
        }
        assert_eq!(
            l.validate(&request("print(1)", None), &[]),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            l.validate(&request("print(1)", Some(0.5)), &[]),
            Ok(Duration::from_millis(500))
        );
    }

    #[test]
    fn unknown_servers_are_listed() {
        let l = limits();
        let mut r = request("print(1)", None);
        r.servers = vec!["github".into()];
        assert!(
            l.validate(&r, &[])
                .unwrap_err()
                .contains("none are configured")
        );
        let error = l.validate(&r, &["time".into(), "fs".into()]).unwrap_err();
        assert!(error.contains("known servers: time, fs"), "{error}");
    }

    #[test]
    fn outcomes() {
        let done = |exit_code, oom, error: Option<&str>| RunDone {
            exit_code,
            oom,
            error: error.map(Into::into),
            ..RunDone::default()
        };
        let ok = Outcome::from_done(&done(0, false, None), 1 << 29);
        assert_eq!(
            (ok.status, ok.verdict),
            (RunStatus::Success, Verdict::Reuse)
        );

        let raised = Outcome::from_done(&done(1, false, Some("ValueError: x")), 1 << 29);
        assert_eq!(raised.status, RunStatus::Error);
        assert_eq!(raised.error.as_deref(), Some("ValueError: x"));

        let segv = Outcome::from_done(&done(-11, false, None), 1 << 29);
        assert_eq!(
            segv.error.as_deref(),
            Some("killed by SIGSEGV (segmentation fault)")
        );
        assert_eq!(segv.verdict, Verdict::Reuse);

        let exit3 = Outcome::from_done(&done(3, false, None), 1 << 29);
        assert_eq!(exit3.error.as_deref(), Some("exited with code 3"));

        let oom = Outcome::from_done(&done(-9, true, None), 1 << 29);
        assert_eq!(oom.status, RunStatus::Oom);
        assert!(oom.error.unwrap().contains("512 MiB"));
        assert_eq!(oom.verdict, Verdict::Recycle(RecycleReason::Oom));

        let timeout = Outcome::from_failure(
            &SandboxFailure::Timeout(Duration::from_secs(2)),
            false,
            &limits(),
        );
        assert_eq!(timeout.status, RunStatus::Timeout);
        let error = timeout.error.unwrap();
        assert!(
            error.contains("timed out after 2s")
                && error.contains("up to 2m (MCP_BRIDGE_MAX_TIMEOUT)"),
            "{error}"
        );
        assert_eq!(timeout.verdict, Verdict::Recycle(RecycleReason::Timeout));

        let died = SandboxFailure::AgentDied {
            agent_stderr: String::new(),
        };
        assert_eq!(
            Outcome::from_failure(&died, true, &limits()).status,
            RunStatus::Oom
        );
        let died = Outcome::from_failure(&died, false, &limits());
        assert_eq!(died.status, RunStatus::Error);
        assert_eq!(died.verdict, Verdict::Recycle(RecycleReason::AgentDied));
    }
}
