//! The command line: `sparc serve`, `sparc gateway`, `sparc migrate`, `sparc user …`,
//! `sparc projections …`, `sparc audit …`, and `sparc worker`, which talks to the API only and
//! has its own configuration file.

use std::io::{BufRead, IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use sparc_domain::user::{Role, UserCommand as DomainUserCommand};
use sparc_store::EventMetadata;

use crate::config::Settings;
use crate::server::{Server, shutdown_signal};
use crate::telemetry;

/// sparc: the backend of a dashboard that schedules and watches AI coding agents.
///
/// Configuration comes from defaults, then an optional TOML file, then environment variables
/// (`DATABASE_URL`, `NATS_URL`, `SPARC_LISTEN`, `SPARC_JWT_SECRET`, `SPARC_…`).
#[derive(Debug, Parser)]
#[command(name = "sparc", version, about, long_about = None)]
pub struct Cli {
    /// A TOML settings file (also `SPARC_CONFIG`); for `sparc worker`, the worker's file.
    #[arg(long, global = true, env = "SPARC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Invocation,
}

/// The service's subcommands, which share its settings, and the worker, which does not.
#[derive(Debug, Subcommand)]
enum Invocation {
    #[command(flatten)]
    Service(Command),
    /// Run the built-in worker: an agent that runs its skills' jobs as local commands.
    ///
    /// It logs in to the API, registers in the agent registry and takes the jobs of its skills.
    /// `--config` names its TOML file (see deploy/worker.example.toml); the password comes from
    /// `SPARC_WORKER_PASSWORD`. Needs no database.
    Worker,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole service in one process: REST API, projections, policies and the hash chain.
    /// With no configuration it uses an embedded SQLite file under ./data and needs no other service.
    Serve {
        /// Address to listen on (also `SPARC_LISTEN`; default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run only a WebSocket gateway (`/ws`, `/ws/health`); needs `NATS_URL` and `DATABASE_URL`.
    Gateway {
        /// Address to listen on (also `SPARC_LISTEN`).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Print the OpenAPI document of the REST API (as `/api/openapi.json` serves it), for client
    /// generators; needs no database.
    Openapi,
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Inspect and rebuild the read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Audit the event log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user of any role (the first admin, service accounts for agents). The password is
    /// read from `SPARC_PASSWORD`, else prompted for (not echoed), else read from stdin. Works
    /// while the server runs.
    Create {
        /// Login name: 3 to 50 of letters, digits, '_' and '-'.
        #[arg(long)]
        username: String,
        /// E-mail address.
        #[arg(long)]
        email: String,
        /// One of admin, auditor, agent, user.
        #[arg(long, default_value = "user", value_parser = parse_role)]
        role: Role,
        /// Display name.
        #[arg(long)]
        full_name: Option<String>,
    },
    #[command(flatten)]
    Change(AccountChange),
}

/// Changes to an existing account; each works while the server runs.
#[derive(Debug, Subcommand)]
enum AccountChange {
    /// Change a user's role. Ends every session of that user (their tokens name the old role).
    /// Works while the server runs.
    SetRole {
        /// The user's login name.
        #[arg(long)]
        username: String,
        /// One of admin, auditor, agent, user.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Deactivate a user: they can no longer sign in and every session ends.
    Deactivate {
        /// The user's login name.
        #[arg(long)]
        username: String,
    },
    /// Activate a deactivated user again.
    Activate {
        /// The user's login name.
        #[arg(long)]
        username: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Show each projection's position, lag (events and seconds) and status.
    List,
    /// Rebuild a read model from the log into a shadow table while the live one keeps serving,
    /// then swap them. Shows progress (processed/total, events/s, ETA) on a terminal.
    Rebuild {
        /// The read model (tasks, projects, executions, agents, users).
        name: Option<String>,
        /// Rebuild every read model.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// List the events a consumer could not apply and parked (all consumers, or NAME's), with
    /// the error, first and last seen, and attempts.
    Parked {
        /// The consumer (a read model, or a policy such as policy_project_cascade).
        name: Option<String>,
    },
    /// Apply NAME's parked events again, in log order (after a fix): every parked stream, or
    /// with --position only the stream of the event parked there. Events that fail again stay
    /// parked. Works while the server runs.
    Retry {
        /// The consumer.
        name: String,
        /// The global position of a parked event: retry its stream only.
        #[arg(long)]
        position: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain over the whole log and report the first bad position.
    /// Exits with status 1 when the chain is broken.
    Verify,
    /// Write the log, or a time window of it, in log order: one event per line as the API
    /// shows it (password hashes redacted). Shows progress on stderr when it is a terminal.
    Export {
        /// Only events recorded at or after this RFC 3339 time.
        #[arg(long, value_parser = crate::audit::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events recorded before this RFC 3339 time.
        #[arg(long, value_parser = crate::audit::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: crate::audit::ExportFormat,
        /// Write to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

fn parse_role(raw: &str) -> Result<Role, String> {
    Role::parse(raw).map_err(|e| e.to_string())
}

/// Parses the command line, runs it, and maps failure to exit status 1 with the error on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Invocation::Service(command) => {
            let settings = match Settings::load(cli.config.as_deref()) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("error: invalid configuration: {error}");
                    return ExitCode::FAILURE;
                }
            };
            telemetry::init(settings.log_format);
            block_on(run(command, settings))
        }
        Invocation::Worker => run_worker(cli.config.as_deref()),
    }
}

/// `sparc worker`: reads the worker's file and runs until ctrl-c or SIGTERM.
fn run_worker(file: Option<&Path>) -> ExitCode {
    let Some(file) = file else {
        eprintln!("error: sparc worker needs --config <worker.toml>");
        return ExitCode::FAILURE;
    };
    let config = match crate::worker::config::WorkerConfig::load(file) {
        Ok(config) => config,
        Err(error) => {
            eprintln!(
                "error: invalid worker configuration in {}: {error}",
                file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(config.log_format);
    block_on(async {
        crate::worker::run(config, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `work` on a multi-threaded runtime.
fn block_on(work: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            let stop = shutdown_signal();
            let server = Server::start(settings).await?;
            stop.await;
            tracing::info!("shutting down");
            server.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway { listen } => {
            settings.listen = listen.unwrap_or(settings.listen);
            crate::realtime::run_gateway(settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            let document = sparc_api::routes::openapi_document()
                .to_pretty_json()
                .context("rendering the OpenAPI document")?;
            let written = writeln!(std::io::stdout().lock(), "{document}");
            // A reader that stops early (`| head`) is no failure.
            match written {
                Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(error).context("writing the OpenAPI document")
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Migrate => {
            let db = settings.connect_database().await?;
            db.migrate().await.context("migration failed")?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::User {
            command:
                UserCommand::Create {
                    username,
                    email,
                    role,
                    full_name,
                },
        } => {
            let db = settings.connect_database().await?;
            db.migrate().await.context("migration failed")?;
            let password = read_password()?;
            let commands = sparc_store::CommandBus::new(&db);
            let metadata = EventMetadata::new("cli", uuid::Uuid::now_v7().to_string());
            let user = sparc_accounts::registration::register_user(
                &commands,
                sparc_accounts::registration::Registration {
                    username,
                    email,
                    password,
                    full_name,
                    role,
                    hash_cost: settings.api.password_hash_cost(),
                },
                &metadata,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "created user {} ({}) with role {}",
                user.state.id,
                username_of(&user.state),
                role
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::User {
            command: UserCommand::Change(change),
        } => change_account(&settings, change).await,
        Command::Projections { command } => {
            let db = settings.connect_database().await?;
            match command {
                ProjectionsCommand::List => {
                    crate::projections::list(&db, settings.projection_stall_after()).await?
                }
                ProjectionsCommand::Parked { name } => {
                    crate::projections::parked(&db, name.as_deref()).await?
                }
                ProjectionsCommand::Retry { name, position } => {
                    let jobs = crate::server::job_stream(&settings).await?;
                    crate::projections::retry(&db, jobs, &name, position).await?
                }
                ProjectionsCommand::Rebuild { name, all } => {
                    crate::projections::rebuild_named(&db, name.as_deref(), all).await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Export {
                    since,
                    until,
                    format,
                    output,
                },
        } => {
            let db = settings.connect_database().await?;
            let options = crate::audit::ExportOptions {
                since,
                until,
                format,
                progress: std::io::stderr().is_terminal(),
            };
            crate::audit::export_to(&db, &options, output.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let db = settings.connect_database().await?;
            let report = sparc_store::verify(&db).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

impl AccountChange {
    /// The account's username and the domain command that makes the change at `at`.
    fn into_command(self, at: chrono::DateTime<chrono::Utc>) -> (String, DomainUserCommand) {
        match self {
            AccountChange::SetRole { username, role } => {
                (username, DomainUserCommand::ChangeRole { role, at })
            }
            AccountChange::Deactivate { username } => {
                (username, DomainUserCommand::SetActive { active: false, at })
            }
            AccountChange::Activate { username } => {
                (username, DomainUserCommand::SetActive { active: true, at })
            }
        }
    }
}

/// Makes `change` to its account, found through the username's reservation (the log itself, so
/// this works whether or not a server keeps the read models current).
async fn change_account(settings: &Settings, change: AccountChange) -> anyhow::Result<ExitCode> {
    use sparc_domain::reservation::{Reservation, reservation_id};
    use sparc_domain::user::User;

    let (username, command) = change.into_command(chrono::Utc::now());
    let db = settings.connect_database().await?;
    db.migrate().await.context("migration failed")?;
    let commands = sparc_store::CommandBus::new(&db);
    let (reservation, _) = commands
        .load::<Reservation>(&reservation_id("username", &username))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(user_id) = reservation.owner else {
        bail!("no user named '{username}'");
    };
    let metadata = EventMetadata::new("cli", uuid::Uuid::now_v7().to_string());
    let user = commands
        .execute::<User>(&user_id.to_string(), command, &metadata, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "user {} ({}): role {}, {}",
        user.state.id,
        username_of(&user.state),
        user.state.role,
        if user.state.is_active {
            "active"
        } else {
            "deactivated"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn username_of(user: &sparc_domain::user::User) -> &str {
    user.username.as_ref().map_or("", |u| u.as_str())
}

/// `SPARC_PASSWORD`, else a prompt without echo on a terminal, else the first line of stdin.
fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("SPARC_PASSWORD") {
        return Ok(password);
    }
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password: ")?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        bail!("no password given (set SPARC_PASSWORD or type it at the prompt)");
    }
    Ok(password)
}
