//! The worker's configuration: a TOML file (see `deploy/worker.example.toml`), then
//! `SPARC_WORKER_…` environment variables for its top-level keys, then the password from
//! `SPARC_WORKER_PASSWORD`. Everything is checked once here, so the rest of the worker only
//! ever sees valid values; the password is a [`Secret`] and never prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use sparc_domain::agent::AgentType;
use sparc_domain::values::{AgentName, SkillName};
use uuid::Uuid;

use crate::config::{LogFormat, Secret};

/// The environment variable the password is read from. It is read as is, not through
/// figment, which would parse a password such as `12345678` as a number.
pub const PASSWORD_VAR: &str = "SPARC_WORKER_PASSWORD";

/// The longest long-poll wait the jobs endpoint accepts.
const MAX_POLL_WAIT_SECONDS: u64 = 30;
/// The registry's limits on `capabilities`: how many names, and how long each may be.
const MAX_SKILLS: usize = 100;
const MAX_CAPABILITY_CHARS: usize = 100;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or is not TOML, a key is unknown, or a value has the wrong type.
    #[error("{0}")]
    Read(#[from] Box<figment::Error>),
    /// A value is out of its range or malformed; `key` names it (`skills.echo.command`).
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A valid worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The API's base URL, without a trailing `/` (`http://127.0.0.1:8080`).
    pub api_url: String,
    /// The login of a user with role `agent`.
    pub username: String,
    /// That user's password.
    pub password: Secret,
    /// The agent's name in the registry.
    pub name: AgentName,
    /// The agent's id in the registry: configured, or derived from the name by [`agent_id_for`].
    pub agent_id: Uuid,
    /// The agent's type in the registry.
    pub agent_type: AgentType,
    /// How many jobs run at once (at least 1).
    pub concurrency: usize,
    /// How long one poll for jobs waits on the server when there are none (0..=30 s).
    pub poll_wait: Duration,
    /// How long running jobs may go on after a stop signal before they are killed.
    pub shutdown_grace: Duration,
    /// How logs are written.
    pub log_format: LogFormat,
    /// The skills by name (names are valid [`SkillName`]s); at least one.
    pub skills: BTreeMap<String, Skill>,
}

/// One skill: the command that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    /// The program and its arguments, run without a shell; never empty.
    pub command: Vec<String>,
    /// The directory it runs in (default: the worker's own).
    pub working_dir: Option<PathBuf>,
    /// The skill's own time limit; a job's shorter limit wins.
    pub timeout: Option<Duration>,
    /// Variables added to the worker's environment for this skill.
    pub env: BTreeMap<String, String>,
}

/// The file's shape; every key not listed here is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    api_url: String,
    username: String,
    password: Option<Secret>,
    name: String,
    agent_id: Option<Uuid>,
    agent_type: Option<String>,
    concurrency: Option<usize>,
    poll_wait_seconds: Option<u64>,
    shutdown_grace_seconds: Option<u64>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    skills: BTreeMap<String, RawSkill>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSkill {
    command: Vec<String>,
    working_dir: Option<PathBuf>,
    timeout_seconds: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// The default agent id: a UUIDv5 in the URL namespace of `urn:sparc:agent:<name in lower
/// case>`, so a restarted worker finds its registry entry again. Lower case because the
/// registry compares names without case: two spellings of one name are one agent.
pub fn agent_id_for(name: &AgentName) -> Uuid {
    let urn = format!("urn:sparc:agent:{}", name.as_str().to_lowercase());
    Uuid::new_v5(&Uuid::NAMESPACE_URL, urn.as_bytes())
}

impl WorkerConfig {
    /// Reads `file`, then the `SPARC_WORKER_…` variables, and checks the result.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let figment = Figment::from(Toml::file_exact(file))
            .merge(Env::prefixed("SPARC_WORKER_").ignore(&["PASSWORD"]));
        Self::from_figment(figment, std::env::var(PASSWORD_VAR).ok())
    }

    /// Checks what `figment` holds; `password` (from the environment) wins over the file's.
    fn from_figment(figment: Figment, password: Option<String>) -> Result<Self, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(Box::new)?;
        let api_url = parse_api_url(&raw.api_url)?;
        if raw.username.trim().is_empty() {
            return Err(invalid("username", "must not be empty"));
        }
        let password = password.map(Secret::new).or(raw.password);
        let password = password.filter(|p| !p.expose().is_empty()).ok_or_else(|| {
            invalid(
                "password",
                format!("missing: set {PASSWORD_VAR} (preferred) or `password` in the file"),
            )
        })?;
        let name = AgentName::parse(&raw.name).map_err(|e| invalid("name", e.0))?;
        let agent_type = AgentType::parse(raw.agent_type.as_deref().unwrap_or("custom"))
            .map_err(|e| invalid("agent_type", e.0))?;
        let concurrency = raw.concurrency.unwrap_or(1);
        if concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        let poll_wait_seconds = raw.poll_wait_seconds.unwrap_or(MAX_POLL_WAIT_SECONDS);
        if poll_wait_seconds > MAX_POLL_WAIT_SECONDS {
            return Err(invalid(
                "poll_wait_seconds",
                format!("must be 0 to {MAX_POLL_WAIT_SECONDS}"),
            ));
        }
        if raw.skills.is_empty() {
            return Err(invalid(
                "skills",
                "at least one skill is needed ([skills.<name>] with a command)",
            ));
        }
        if raw.skills.len() > MAX_SKILLS {
            return Err(invalid(
                "skills",
                format!("at most {MAX_SKILLS} skills (the registry's limit on capabilities)"),
            ));
        }
        let skills = raw
            .skills
            .into_iter()
            .map(|(name, skill)| Ok((check_skill_name(&name)?, check_skill(&name, skill)?)))
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            api_url,
            username: raw.username,
            password,
            agent_id: raw.agent_id.unwrap_or_else(|| agent_id_for(&name)),
            name,
            agent_type,
            concurrency,
            poll_wait: Duration::from_secs(poll_wait_seconds),
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds.unwrap_or(10)),
            log_format: raw.log_format.unwrap_or_default(),
            skills,
        })
    }
}

/// An `http://` URL with a host; the result has no trailing `/`. The HTTP client is built
/// without a TLS stack, so `https://` is refused here rather than failing on the first call.
fn parse_api_url(raw: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw).map_err(|e| invalid("api_url", e.to_string()))?;
    if url.scheme() != "http" {
        return Err(invalid(
            "api_url",
            "must be an http:// URL (this build speaks plain HTTP; reach the API on a private \
             network or through a local TLS proxy)",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() {
        return Err(invalid(
            "api_url",
            "must be a base URL such as http://127.0.0.1:8080",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn check_skill_name(name: &str) -> Result<String, ConfigError> {
    let key = format!("skills.{name}");
    let name = SkillName::parse(name).map_err(|e| invalid(&key, e.0))?;
    // The registry keeps capabilities of at most 100 characters.
    if name.as_str().len() > MAX_CAPABILITY_CHARS {
        return Err(invalid(
            key,
            format!(
                "a skill name of this worker may have at most {MAX_CAPABILITY_CHARS} characters"
            ),
        ));
    }
    Ok(name.as_str().to_owned())
}

fn check_skill(name: &str, raw: RawSkill) -> Result<Skill, ConfigError> {
    let key = |field: &str| format!("skills.{name}.{field}");
    if raw.command.first().is_none_or(String::is_empty) {
        return Err(invalid(
            key("command"),
            "must name a program: a non-empty list such as [\"echo\", \"hello\"]",
        ));
    }
    if raw.timeout_seconds == Some(0) {
        return Err(invalid(key("timeout_seconds"), "must be at least 1"));
    }
    if let Some(bad) = raw
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(invalid(
            key("env"),
            format!("{bad:?} is not a variable name"),
        ));
    }
    Ok(Skill {
        command: raw.command,
        working_dir: raw.working_dir,
        timeout: raw.timeout_seconds.map(Duration::from_secs),
        env: raw.env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        api_url = "http://127.0.0.1:8080/"
        username = "worker-1"
        name = "Worker-1"
        [skills.echo]
        command = ["echo", "hello"]
    "#;

    fn parse(toml: &str) -> Result<WorkerConfig, ConfigError> {
        WorkerConfig::from_figment(Figment::from(Toml::string(toml)), Some("pw".to_owned()))
    }

    /// The key a refusal names, or the whole message of a read error.
    fn refusal(toml: &str) -> String {
        match parse(toml).expect_err("the configuration should be refused") {
            ConfigError::Invalid { key, .. } => key,
            ConfigError::Read(error) => error.to_string(),
        }
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let config = parse(MINIMAL).expect("the minimal configuration should load");
        assert_eq!(config.api_url, "http://127.0.0.1:8080");
        assert_eq!(config.agent_type, AgentType::Custom);
        assert_eq!(config.concurrency, 1);
        assert_eq!(config.poll_wait, Duration::from_secs(30));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.agent_id, agent_id_for(&config.name));
        assert_eq!(
            config.skills["echo"],
            Skill {
                command: vec!["echo".to_owned(), "hello".to_owned()],
                working_dir: None,
                timeout: None,
                env: BTreeMap::new(),
            }
        );
    }

    #[test]
    fn every_key_of_the_example_file_is_read() {
        let example = include_str!("../../../../deploy/worker.example.toml");
        let config = parse(example).expect("the example configuration should load");
        let echo = &config.skills["echo"];
        assert_eq!(echo.working_dir.as_deref(), Some(Path::new("/tmp")));
        assert_eq!(echo.timeout, Some(Duration::from_secs(60)));
        assert_eq!(echo.env["GREETING"], "hi");
    }

    #[test]
    fn the_default_agent_id_is_a_uuid_v5_of_the_name_without_case() {
        let id = agent_id_for(&AgentName::parse("Worker-1").unwrap());
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(id, agent_id_for(&AgentName::parse("worker-1").unwrap()));
        assert_ne!(id, agent_id_for(&AgentName::parse("worker-2").unwrap()));
        let configured = parse(&format!(
            "agent_id = \"0190a1b2-0000-7000-8000-000000000001\"\n{MINIMAL}"
        ))
        .expect("a configured agent id should load");
        assert_eq!(
            configured.agent_id.to_string(),
            "0190a1b2-0000-7000-8000-000000000001"
        );
    }

    #[test]
    fn unknown_keys_are_refused_at_the_top_and_in_a_skill() {
        let top = refusal(&format!("colour = \"blue\"\n{MINIMAL}"));
        assert!(
            top.contains("unknown field") && top.contains("colour"),
            "{top}"
        );
        let in_skill = refusal(&format!("{MINIMAL}\nshell = true\n"));
        assert!(
            in_skill.contains("unknown field") && in_skill.contains("shell"),
            "{in_skill}"
        );
    }

    #[test]
    fn an_empty_command_is_refused() {
        let empty = MINIMAL.replace(r#"["echo", "hello"]"#, "[]");
        assert_eq!(refusal(&empty), "skills.echo.command");
        let blank = MINIMAL.replace(r#"["echo", "hello"]"#, r#"["", "hello"]"#);
        assert_eq!(refusal(&blank), "skills.echo.command");
    }

    #[test]
    fn skill_names_outside_the_allowed_characters_are_refused() {
        assert_eq!(
            refusal(&MINIMAL.replace("[skills.echo]", "[skills.\"say hi\"]")),
            "skills.say hi"
        );
        let long = "a".repeat(101);
        assert_eq!(
            refusal(&MINIMAL.replace("[skills.echo]", &format!("[skills.{long}]"))),
            format!("skills.{long}")
        );
        assert!(parse(&MINIMAL.replace("[skills.echo]", "[skills.Say_hi-2]")).is_ok());
    }

    #[test]
    fn a_configuration_without_skills_is_refused() {
        let without = r#"
            api_url = "http://127.0.0.1:8080"
            username = "worker-1"
            name = "worker-1"
        "#;
        assert_eq!(refusal(without), "skills");
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_key() {
        for (line, key) in [
            ("concurrency = 0", "concurrency"),
            ("poll_wait_seconds = 31", "poll_wait_seconds"),
            ("agent_type = \"wizard\"", "agent_type"),
        ] {
            assert_eq!(refusal(&format!("{line}\n{MINIMAL}")), key, "{line}");
        }
        let blank_name = MINIMAL.replace("name = \"Worker-1\"", "name = \"  \"");
        assert_eq!(refusal(&blank_name), "name");
        let zero = format!("{MINIMAL}\ntimeout_seconds = 0\n");
        assert_eq!(refusal(&zero), "skills.echo.timeout_seconds");
        let bad_env = format!("{MINIMAL}\nenv = {{ \"A=B\" = \"c\" }}\n");
        assert_eq!(refusal(&bad_env), "skills.echo.env");
    }

    #[test]
    fn only_a_plain_http_base_url_is_accepted() {
        for url in [
            "https://sparc.example.com",
            "127.0.0.1:8080",
            "http://h/?a=1",
        ] {
            let toml = MINIMAL.replace("http://127.0.0.1:8080/", url);
            assert_eq!(refusal(&toml), "api_url", "{url}");
        }
        let prefixed = MINIMAL.replace("http://127.0.0.1:8080/", "http://proxy/sparc/");
        assert_eq!(parse(&prefixed).unwrap().api_url, "http://proxy/sparc");
    }

    #[test]
    fn the_password_comes_from_the_environment_first_and_is_required() {
        let with_file_password = format!("password = \"from-file\"\n{MINIMAL}");
        let figment = || Figment::from(Toml::string(&with_file_password));
        let from_env = WorkerConfig::from_figment(figment(), Some("from-env".to_owned()));
        assert_eq!(from_env.unwrap().password.expose(), "from-env");
        let from_file = WorkerConfig::from_figment(figment(), None);
        assert_eq!(from_file.unwrap().password.expose(), "from-file");
        let missing = WorkerConfig::from_figment(Figment::from(Toml::string(MINIMAL)), None);
        let Err(ConfigError::Invalid { key, message }) = missing else {
            panic!("a configuration without a password should be refused");
        };
        assert_eq!(key, "password");
        assert!(message.contains(PASSWORD_VAR), "{message}");
    }

    #[test]
    fn the_password_never_prints() {
        let config = parse(&format!("password = \"hunter2\"\n{MINIMAL}")).unwrap();
        let config = WorkerConfig {
            password: Secret::new("hunter2"),
            ..config
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's `Jail` closure returns its own large error
    fn the_environment_overrides_the_file_and_a_numeric_password_stays_text() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("worker.toml", MINIMAL)?;
            jail.set_env("SPARC_WORKER_CONCURRENCY", "4");
            jail.set_env("SPARC_WORKER_PASSWORD", "12345678");
            let config =
                WorkerConfig::load(Path::new("worker.toml")).expect("the file should load");
            assert_eq!(config.concurrency, 4);
            assert_eq!(config.password.expose(), "12345678");
            jail.set_env("SPARC_WORKER_COLOUR", "blue");
            let refused = WorkerConfig::load(Path::new("worker.toml"));
            assert!(matches!(refused, Err(ConfigError::Read(_))));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's `Jail` closure returns its own large error
    fn a_missing_file_is_an_error_naming_it() {
        // In a jail, so that no other test's variables are in the environment.
        figment::Jail::expect_with(|_| {
            let error = WorkerConfig::load(Path::new("/nonexistent/worker.toml"))
                .expect_err("a missing file should be refused");
            assert!(
                error.to_string().contains("/nonexistent/worker.toml"),
                "{error}"
            );
            Ok(())
        });
    }
}
