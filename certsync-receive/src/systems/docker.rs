//! Step 6: reload mailcow's containers through the Docker API.
//!
//! A compose service's containers are found by their labels,
//! `com.docker.compose.project` and `com.docker.compose.service`, never by
//! name: docker-compose v1 names them `x_postfix-mailcow_1`, v2
//! `x-postfix-mailcow-1`, and an operator may rename the project. Matching
//! on both labels means another compose project on the same host that also
//! has a `postfix-mailcow` service is never touched.
//! An entry may also name its own project (`"shop/smtp"`) or one
//! container by exact name (`"container:edge-relay"`): [`crate::systems::selector`].
//!
//! For each service the reload command (configured under `[docker.reload]`,
//! else mailcow's: [`crate::systems::mailcow::reload_command`], which says why each
//! is what it is) is exec'd in every running container and its exit code
//! checked. A failed
//! reload restarts that container, because a daemon that refused to reload
//! still serves the old certificate and a restart makes it read the new one.
//!
//! Invariants:
//! - Nothing is silently skipped: a missing or stopped container is an
//!   outcome of its own ([`ReloadStatus::Missing`], [`ReloadStatus::Stopped`])
//!   that names the service, and the caller maps it to exit code 4.
//! - Without a configured project, containers of several projects carrying
//!   the same service label are an [`ReloadStatus::Ambiguous`] refusal that
//!   names them all; certsync never guesses which mail server is meant.
//! - A dry run lists what would be exec'd and where, and changes nothing.
//! - Every wait is bounded: the exec, the exit-code poll, the restart.
//!
//! The Docker client speaks the server's API version
//! ([`Docker::negotiate_version`]): Debian's docker.io 20.10 speaks API
//! 1.41, older than bollard's default.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{ListContainersOptions, RestartContainerOptions};
use bollard::Docker;
use certsync_core::config::DockerConfig;
use futures_util::StreamExt;

use crate::systems::selector::{self, Selector};
use serde::Serialize;

/// The compose label holding the project name.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// The compose label holding the service name.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";

/// Seconds bollard waits for any one API response.
const API_TIMEOUT_SECS: u64 = 120;
/// How long a reload command may run before it counts as failed.
const EXEC_TIMEOUT: Duration = Duration::from_secs(90);
/// After an exec's output ends, Docker may still report it running for a
/// moment: poll its exit code for this long.
const EXEC_EXIT_WAIT: Duration = Duration::from_secs(10);
const EXEC_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Seconds Docker gives a container to stop before it kills it on restart.
/// mailcow's postfix and dovecot flush queues and connections on TERM.
const RESTART_STOP_SECS: i32 = 30;
/// How much of a failed reload command's output is quoted in the message.
const MAX_QUOTED_OUTPUT: usize = 600;

/// What to reload: the Docker socket, the compose project (if known) and
/// each service with its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    pub socket: PathBuf,
    /// `com.docker.compose.project` to match; `None` accepts any single
    /// project.
    pub project: Option<String>,
    /// Other spellings of `project`, tried in order for a service that has
    /// no container in `project`: with COMPOSE_PROJECT_NAME unset, compose
    /// v2 names the project `mailcow-dockerized` and old docker-compose v1
    /// `mailcowdockerized` ([`crate::systems::mailcow::project_names`]).
    pub project_alternates: Vec<String>,
    pub services: Vec<ServiceReload>,
}

/// One compose service and the command that makes it re-read its
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReload {
    pub service: String,
    pub command: Vec<String>,
}

impl ReloadPlan {
    /// The plan for `services` under `[docker]`: each service's command is
    /// the configured one, else mailcow's default.
    pub fn from_config(
        docker: &DockerConfig,
        services: &[String],
    ) -> Result<ReloadPlan, ReloadError> {
        let services = services
            .iter()
            .map(|service| match command_for(docker, service) {
                Some(command) => Ok(ServiceReload {
                    service: service.clone(),
                    command,
                }),
                // Settings refuse such an entry when receive.toml loads;
                // a plan built by hand can still lack one.
                None => Err(ReloadError::NoCommand {
                    service: service.clone(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReloadPlan {
            socket: docker.socket(),
            project: docker.project.clone(),
            project_alternates: Vec::new(),
            services,
        })
    }
}

/// The command that reloads the `reload` entry `entry`: `[docker.reload]`
/// under the entry's keys ([`selector::command_keys`]), else mailcow's own
/// ([`crate::systems::mailcow::reload_command`]). `None` when neither has
/// one, or the configured one is empty.
pub fn command_for(docker: &DockerConfig, entry: &str) -> Option<Vec<String>> {
    let keys = selector::command_keys(entry);
    keys.iter()
        .find_map(|key| docker.reload_command(key))
        .or_else(|| {
            keys.iter()
                .find_map(|key| crate::systems::mailcow::reload_command(key))
        })
        .filter(|command| !command.is_empty())
}

/// How a service's reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadStatus {
    /// The command exited 0 in every container.
    Reloaded,
    /// The command failed in at least one container, which was restarted.
    Restarted,
    /// Dry run: the command would run in these containers.
    WouldReload,
    /// No container carries the service's labels.
    Missing,
    /// At least one container is not running (the running ones were
    /// reloaded).
    Stopped,
    /// Several compose projects have this service and none is configured.
    Ambiguous,
    /// The reload failed and so did the restart, or Docker refused a call.
    Failed,
}

impl ReloadStatus {
    /// Did the service end up reading the new certificate (or, in a dry
    /// run, would it)?
    pub fn ok(self) -> bool {
        matches!(
            self,
            ReloadStatus::Reloaded | ReloadStatus::Restarted | ReloadStatus::WouldReload
        )
    }
}

impl fmt::Display for ReloadStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReloadStatus::Reloaded => "reloaded",
            ReloadStatus::Restarted => "restarted",
            ReloadStatus::WouldReload => "would reload",
            ReloadStatus::Missing => "missing",
            ReloadStatus::Stopped => "stopped",
            ReloadStatus::Ambiguous => "ambiguous",
            ReloadStatus::Failed => "failed",
        })
    }
}

/// What happened to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceOutcome {
    pub service: String,
    /// The names of the containers that matched (without Docker's leading
    /// `/`).
    pub containers: Vec<String>,
    pub status: ReloadStatus,
    /// One line for the operator: what was done where, and what to do if
    /// it went wrong.
    pub message: String,
}

/// Did every service reload (or, in a dry run, would it)?
pub fn outcomes_ok(outcomes: &[ServiceOutcome]) -> bool {
    outcomes.iter().all(|o| o.status.ok())
}

/// Reload failures that name the socket, service or container and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the Docker socket {socket} does not exist: is Docker running (`systemctl status docker`)? Otherwise set `socket` under [docker] in receive.toml")]
    SocketMissing { socket: PathBuf },
    #[error("permission denied on the Docker socket {socket}: add the certsync user to the docker group or run deploy as root")]
    SocketPermission { socket: PathBuf },
    #[error(
        "nothing answers on the Docker socket {socket}: start Docker (`systemctl start docker`)"
    )]
    SocketRefused { socket: PathBuf },
    #[error("cannot connect to the Docker socket {socket}: {source}")]
    SocketIo {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the Docker socket path {socket} is not valid UTF-8")]
    SocketPath { socket: PathBuf },
    #[error("Docker at {socket} did not answer the version query: {source}")]
    Negotiate {
        socket: PathBuf,
        #[source]
        source: Box<bollard::errors::Error>,
    },
    #[error("no reload command for compose service {service:?}: add `\"{service}\" = [\"…\"]` under [docker.reload] in receive.toml")]
    NoCommand { service: String },
    #[error("listing the containers of service {service} failed: {source}")]
    List {
        service: String,
        #[source]
        source: Box<bollard::errors::Error>,
    },
    #[error("`{command}` in container {container} (service {service}) could not be run: {source}")]
    Exec {
        service: String,
        container: String,
        command: String,
        #[source]
        source: Box<bollard::errors::Error>,
    },
    #[error(
        "`{command}` in container {container} (service {service}) did not finish within {secs} s"
    )]
    ExecTimeout {
        service: String,
        container: String,
        command: String,
        secs: u64,
    },
    #[error("`{command}` in container {container} (service {service}) exited {code}{output}")]
    ExitCode {
        service: String,
        container: String,
        command: String,
        code: i64,
        /// `: "<the command's last words>"`, or empty.
        output: String,
    },
    #[error("restarting container {container} (service {service}) failed: {source}; restart it by hand: docker restart {container}")]
    Restart {
        service: String,
        container: String,
        #[source]
        source: Box<bollard::errors::Error>,
    },
}

/// Connect to Docker at `socket`, telling apart the reasons it cannot be
/// reached, and agree on an API version.
pub async fn connect(socket: &Path) -> Result<Docker, ReloadError> {
    // bollard reports a refused or forbidden socket as an opaque hyper
    // error; a plain connect first gives the operator the real reason.
    if let Err(e) = tokio::net::UnixStream::connect(socket).await {
        let socket = socket.to_path_buf();
        return Err(match e.kind() {
            std::io::ErrorKind::NotFound => ReloadError::SocketMissing { socket },
            std::io::ErrorKind::PermissionDenied => ReloadError::SocketPermission { socket },
            std::io::ErrorKind::ConnectionRefused => ReloadError::SocketRefused { socket },
            _ => ReloadError::SocketIo { socket, source: e },
        });
    }
    let path = socket.to_str().ok_or_else(|| ReloadError::SocketPath {
        socket: socket.to_path_buf(),
    })?;
    let negotiate = |source| ReloadError::Negotiate {
        socket: socket.to_path_buf(),
        source: Box::new(source),
    };
    let docker = Docker::connect_with_unix(path, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        .map_err(negotiate)?;
    docker.negotiate_version().await.map_err(negotiate)
}

/// Reload every service of `plan`, concurrently (each is its own
/// container: the step takes as long as the slowest reload, not the sum);
/// the outcomes are in the plan's order. `Err` only when Docker cannot be
/// reached at all; every per-service problem is a [`ServiceOutcome`].
pub async fn reload(plan: &ReloadPlan, dry_run: bool) -> Result<Vec<ServiceOutcome>, ReloadError> {
    let docker = connect(&plan.socket).await?;
    let outcomes = futures_util::future::join_all(plan.services.iter().map(|service| async {
        let project = project_for(&docker, plan, &service.service).await;
        reload_service(&docker, project.as_deref(), service, dry_run).await
    }))
    .await;
    for outcome in &outcomes {
        tracing::info!(
            service = %outcome.service,
            status = %outcome.status,
            containers = ?outcome.containers,
            "reload: {}",
            outcome.message
        );
    }
    Ok(outcomes)
}

/// Restart the running containers of `service` once: the fallback when
/// its reload reported success but verify still sees the old certificate
/// (`why` says so in the outcome). `Err` only when Docker cannot be
/// reached; a service without a running container is an outcome.
pub async fn restart_service(
    plan: &ReloadPlan,
    service: &str,
    why: &str,
) -> Result<ServiceOutcome, ReloadError> {
    let docker = connect(&plan.socket).await?;
    let project = project_for(&docker, plan, service).await;
    let project = project.as_deref();
    let outcome = |containers, status, message| ServiceOutcome {
        service: service.to_string(),
        containers,
        status,
        message,
    };
    let found = match list(&docker, project, service).await {
        Ok(found) => found,
        Err(source) => {
            let e = ReloadError::List {
                service: service.to_string(),
                source: Box::new(source),
            };
            return Ok(outcome(vec![], ReloadStatus::Failed, e.to_string()));
        }
    };
    if project.is_none() && ambiguous_projects(&found).is_some() {
        return Ok(outcome(
            names(&found),
            ReloadStatus::Ambiguous,
            format!("service {service} runs in several compose projects; not restarting: set `project` under [docker] in receive.toml"),
        ));
    }
    let running: Vec<&Found> = found.iter().filter(|f| f.running).collect();
    if running.is_empty() {
        return Ok(outcome(
            names(&found),
            ReloadStatus::Missing,
            format!("{why}, but no container of service {service} is running to restart"),
        ));
    }
    let mut parts = Vec::new();
    let mut status = ReloadStatus::Restarted;
    for container in running {
        match restart(&docker, service, container).await {
            Ok(()) => {
                tracing::warn!(service, container = %container.name, "restarted: {why}");
                parts.push(format!("{why}; restarted container {}", container.name));
            }
            Err(e) => {
                parts.push(format!("{why}; {e}"));
                status = ReloadStatus::Failed;
            }
        }
    }
    Ok(outcome(names(&found), status, parts.join("; ")))
}

/// The project to match for `service`: the plan's, unless none of its
/// containers is there and an alternate spelling has some.
async fn project_for(docker: &Docker, plan: &ReloadPlan, service: &str) -> Option<String> {
    let project = plan.project.as_deref()?;
    if plan.project_alternates.is_empty() {
        return Some(project.to_string());
    }
    // A listing error is reported by reload_service's own listing.
    match list(docker, Some(project), service).await {
        Ok(found) if found.is_empty() => {}
        _ => return Some(project.to_string()),
    }
    for alt in &plan.project_alternates {
        if list(docker, Some(alt), service)
            .await
            .is_ok_and(|found| !found.is_empty())
        {
            tracing::info!(service, "no container in compose project {project:?}; found the service in {alt:?} (the other spelling of an unset COMPOSE_PROJECT_NAME)");
            return Some(alt.clone());
        }
    }
    Some(project.to_string())
}

/// A container as this module needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    id: String,
    name: String,
    project: String,
    running: bool,
    state: String,
}

impl Found {
    fn of(summary: &ContainerSummary) -> Option<Found> {
        let id = summary.id.clone()?;
        let name = summary
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| id.chars().take(12).collect());
        let project = summary
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_PROJECT))
            .cloned()
            .unwrap_or_default();
        let state = summary.state.unwrap_or(ContainerSummaryStateEnum::EMPTY);
        Some(Found {
            id,
            name,
            project,
            running: state == ContainerSummaryStateEnum::RUNNING,
            state: if state == ContainerSummaryStateEnum::EMPTY {
                "unknown".into()
            } else {
                state.to_string()
            },
        })
    }
}

async fn list(
    docker: &Docker,
    project: Option<&str>,
    service: &str,
) -> Result<Vec<Found>, bollard::errors::Error> {
    let mut labels = vec![format!("{LABEL_SERVICE}={service}")];
    if let Some(p) = project {
        labels.push(format!("{LABEL_PROJECT}={p}"));
    }
    let filters = HashMap::from([("label".to_string(), labels)]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let mut found: Vec<Found> = docker
        .list_containers(Some(options))
        .await?
        .iter()
        .filter_map(Found::of)
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The container named exactly `name` (Docker's `name` filter matches
/// substrings, so `relay` would also find `old-relay`).
async fn list_named(docker: &Docker, name: &str) -> Result<Vec<Found>, bollard::errors::Error> {
    let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    Ok(docker
        .list_containers(Some(options))
        .await?
        .iter()
        .filter_map(Found::of)
        .filter(|f| f.name == name)
        .collect())
}

fn names(found: &[Found]) -> Vec<String> {
    found.iter().map(|f| f.name.clone()).collect()
}

/// Without a configured project, the matching containers must all belong
/// to one: returns the projects when they do not.
fn ambiguous_projects(found: &[Found]) -> Option<BTreeSet<String>> {
    let projects: BTreeSet<String> = found.iter().map(|f| f.project.clone()).collect();
    (projects.len() > 1).then_some(projects)
}

async fn reload_service(
    docker: &Docker,
    project: Option<&str>,
    reload: &ServiceReload,
    dry_run: bool,
) -> ServiceOutcome {
    let service = reload.service.as_str();
    let command = reload.command.join(" ");
    let outcome = |containers: Vec<String>, status, message: String| ServiceOutcome {
        service: service.to_string(),
        containers,
        status,
        message,
    };
    // A `project/service` entry names its own project; `container:NAME`
    // one container ([`crate::systems::selector`]).
    let selected = selector::parse(service);
    let project = match selected {
        Selector::Service {
            project: Some(own), ..
        } => Some(own),
        _ => project,
    };
    let listed = match selected {
        Selector::Service { service, .. } => list(docker, project, service).await,
        Selector::Container(name) => list_named(docker, name).await,
    };
    let found = match listed {
        Ok(found) => found,
        Err(source) => {
            let e = ReloadError::List {
                service: service.to_string(),
                source: Box::new(source),
            };
            return outcome(vec![], ReloadStatus::Failed, e.to_string());
        }
    };
    if found.is_empty() {
        let message = match selected {
            Selector::Service { service, .. } => missing_message(docker, project, service).await,
            Selector::Container(name) => format!(
                "no container is named {name:?}: is it up (`docker ps -a`)? Or fix the name in receive.toml"
            ),
        };
        return outcome(vec![], ReloadStatus::Missing, message);
    }
    if project.is_none() && matches!(selected, Selector::Service { .. }) {
        if let Some(message) = ambiguity(service, &found) {
            return outcome(names(&found), ReloadStatus::Ambiguous, message);
        }
    }
    let (running, stopped): (Vec<&Found>, Vec<&Found>) = found.iter().partition(|f| f.running);
    let stopped_note = stopped
        .iter()
        .map(|f| format!("container {} of service {service} is {}; it reads the new certificate when started (docker start {})", f.name, f.state, f.name))
        .collect::<Vec<_>>()
        .join("; ");

    if dry_run {
        let mut parts: Vec<String> = running
            .iter()
            .map(|f| format!("would run `{command}` in {}", f.name))
            .collect();
        if !stopped.is_empty() {
            parts.push(stopped_note);
            return outcome(names(&found), ReloadStatus::Stopped, parts.join("; "));
        }
        return outcome(names(&found), ReloadStatus::WouldReload, parts.join("; "));
    }

    let (mut parts, mut status) = reload_running(docker, reload, &running).await;
    if !stopped.is_empty() {
        parts.push(stopped_note);
        if status != ReloadStatus::Failed {
            status = ReloadStatus::Stopped;
        }
    }
    outcome(names(&found), status, parts.join("; "))
}

/// Why a service found in several projects is not reloaded, if it is.
fn ambiguity(service: &str, found: &[Found]) -> Option<String> {
    let projects = ambiguous_projects(found)?;
    let listed: Vec<String> = found
        .iter()
        .map(|f| format!("{} (project {:?})", f.name, f.project))
        .collect();
    Some(format!(
        "service {service} runs in {} compose projects: {}; refusing to guess: set `project` under [docker] in receive.toml to one of {:?}",
        projects.len(),
        listed.join(", "),
        projects
    ))
}

/// Run the reload command in each running container, restarting one
/// whose reload fails: a line each, and the worst status.
async fn reload_running(
    docker: &Docker,
    reload: &ServiceReload,
    running: &[&Found],
) -> (Vec<String>, ReloadStatus) {
    let service = reload.service.as_str();
    let command = reload.command.join(" ");
    let mut parts = Vec::new();
    let mut status = ReloadStatus::Reloaded;
    for container in running {
        match exec_reload(docker, service, container, &reload.command).await {
            Ok(()) => parts.push(format!("ran `{command}` in {}", container.name)),
            Err(why) => match restart(docker, service, container).await {
                Ok(()) => {
                    tracing::warn!(service, container = %container.name, "reload failed, container restarted: {why}");
                    parts.push(format!(
                        "{why}; restarted container {} instead",
                        container.name
                    ));
                    if status == ReloadStatus::Reloaded {
                        status = ReloadStatus::Restarted;
                    }
                }
                Err(e) => {
                    parts.push(format!("{why}; {e}"));
                    status = ReloadStatus::Failed;
                }
            },
        }
    }
    (parts, status)
}

/// Why nothing matched, with a hint when the service exists in another
/// project (a renamed COMPOSE_PROJECT_NAME is the usual cause).
async fn missing_message(docker: &Docker, project: Option<&str>, service: &str) -> String {
    let Some(project) = project else {
        return format!(
            "no container carries the label {LABEL_SERVICE}={service}: is mailcow up (`docker compose ps` in the mailcow dir)? Or fix the service name in receive.toml"
        );
    };
    let elsewhere: BTreeSet<String> = match list(docker, None, service).await {
        Ok(found) => found.into_iter().map(|f| f.project).collect(),
        Err(_) => BTreeSet::new(),
    };
    let mut message = format!(
        "no container of service {service} in compose project {project:?} (labels {LABEL_PROJECT}={project}, {LABEL_SERVICE}={service}): is mailcow up (`docker compose ps` in the mailcow dir)?"
    );
    if !elsewhere.is_empty() {
        message.push_str(&format!(
            " Service {service} exists in project(s) {elsewhere:?}: check `project` under [docker] (mailcow.conf's COMPOSE_PROJECT_NAME)"
        ));
    }
    message
}

/// Run the reload command in one container; `Err` says why it did not
/// exit 0 (with the command's own last words).
async fn exec_reload(
    docker: &Docker,
    service: &str,
    container: &Found,
    command: &[String],
) -> Result<(), ReloadError> {
    let shown = command.join(" ");
    let exec_error = |source| ReloadError::Exec {
        service: service.to_string(),
        container: container.name.clone(),
        command: shown.clone(),
        source: Box::new(source),
    };
    let created = docker
        .create_exec(
            &container.id,
            CreateExecOptions {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(exec_error)?;
    let run = async {
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(exec_error)?
        {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(exec_error)?;
                // Keep the tail: the error is usually the last thing said.
                output.extend_from_slice(chunk.as_ref());
                if output.len() > 4 * MAX_QUOTED_OUTPUT {
                    output.drain(..output.len() - MAX_QUOTED_OUTPUT);
                }
            }
        }
        let code = exit_code(docker, &created.id).await.map_err(exec_error)?;
        Ok::<_, ReloadError>((code, output))
    };
    let (code, output) = tokio::time::timeout(EXEC_TIMEOUT, run)
        .await
        .map_err(|_| ReloadError::ExecTimeout {
            service: service.to_string(),
            container: container.name.clone(),
            command: shown.clone(),
            secs: EXEC_TIMEOUT.as_secs(),
        })??;
    match code {
        Some(0) => Ok(()),
        Some(code) => Err(ReloadError::ExitCode {
            service: service.to_string(),
            container: container.name.clone(),
            command: shown,
            code,
            output: quote_output(&output),
        }),
        None => Err(ReloadError::ExecTimeout {
            service: service.to_string(),
            container: container.name.clone(),
            command: shown,
            secs: EXEC_TIMEOUT.as_secs(),
        }),
    }
}

/// The exec's exit code, once Docker has recorded it (`None` if it still
/// reports the exec running after [`EXEC_EXIT_WAIT`]).
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<Option<i64>, bollard::errors::Error> {
    let deadline = tokio::time::Instant::now() + EXEC_EXIT_WAIT;
    loop {
        let inspect = docker.inspect_exec(exec_id).await?;
        if inspect.running != Some(true) {
            if let Some(code) = inspect.exit_code {
                return Ok(Some(code));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(EXEC_POLL_INTERVAL).await;
    }
}

async fn restart(docker: &Docker, service: &str, container: &Found) -> Result<(), ReloadError> {
    let options = RestartContainerOptions {
        t: Some(RESTART_STOP_SECS),
        signal: None,
    };
    docker
        .restart_container(&container.id, Some(options))
        .await
        .map_err(|source| ReloadError::Restart {
            service: service.to_string(),
            container: container.name.clone(),
            source: Box::new(source),
        })
}

/// `: "<output>"`, printable and bounded, or nothing when there is none.
pub(crate) fn quote_output(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() {
        return String::new();
    }
    let tail: String = if cleaned.chars().count() > MAX_QUOTED_OUTPUT {
        let skip = cleaned.chars().count() - MAX_QUOTED_OUTPUT;
        format!("…{}", cleaned.chars().skip(skip).collect::<String>())
    } else {
        cleaned
    };
    format!(": {tail:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, project: &str, running: bool) -> Found {
        Found {
            id: format!("id-{name}"),
            name: name.into(),
            project: project.into(),
            running,
            state: if running { "running" } else { "exited" }.into(),
        }
    }

    #[test]
    fn summaries_lose_the_leading_slash_and_keep_the_project() {
        let summary = ContainerSummary {
            id: Some("abc".into()),
            names: Some(vec!["/x_postfix-mailcow_1".into()]),
            labels: Some(HashMap::from([(
                LABEL_PROJECT.to_string(),
                "x".to_string(),
            )])),
            state: Some(ContainerSummaryStateEnum::EXITED),
            ..Default::default()
        };
        let f = Found::of(&summary).unwrap();
        assert_eq!(f.name, "x_postfix-mailcow_1");
        assert_eq!(f.project, "x");
        assert!(!f.running);
        assert_eq!(f.state, "exited");
        assert!(Found::of(&ContainerSummary::default()).is_none());
    }

    #[test]
    fn several_projects_are_ambiguous_one_is_not() {
        let one = [
            found("a-postfix-mailcow-1", "a", true),
            found("a-postfix-mailcow-2", "a", false),
        ];
        assert!(ambiguous_projects(&one).is_none());
        let two = [
            found("a-postfix-mailcow-1", "a", true),
            found("b_postfix-mailcow_1", "b", true),
        ];
        let projects = ambiguous_projects(&two).unwrap();
        assert_eq!(projects.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn plan_from_config_uses_mailcow_defaults_and_refuses_unknown_services() {
        let docker = DockerConfig {
            socket: Some("/run/d.sock".into()),
            project: Some("mailcowdockerized".into()),
            reload: [(
                "dovecot-mailcow".to_string(),
                vec!["doveadm".to_string(), "reload".to_string()],
            )]
            .into(),
        };
        let plan = ReloadPlan::from_config(
            &docker,
            &[
                "postfix-mailcow".into(),
                "dovecot-mailcow".into(),
                "nginx-mailcow".into(),
            ],
        )
        .unwrap();
        assert_eq!(plan.socket, Path::new("/run/d.sock"));
        let commands: Vec<String> = plan.services.iter().map(|s| s.command.join(" ")).collect();
        assert_eq!(
            commands,
            [
                format!("sh -c {}", crate::systems::mailcow::POSTFIX_RELOAD).as_str(),
                "doveadm reload",
                "nginx -s reload"
            ]
        );
        let err = ReloadPlan::from_config(&docker, &["sogo-mailcow".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sogo-mailcow") && msg.contains("[docker.reload]"),
            "{msg}"
        );
    }

    #[test]
    fn only_successful_outcomes_are_ok() {
        let o = |status| ServiceOutcome {
            service: "s".into(),
            containers: vec![],
            status,
            message: String::new(),
        };
        assert!(outcomes_ok(&[
            o(ReloadStatus::Reloaded),
            o(ReloadStatus::Restarted)
        ]));
        assert!(outcomes_ok(&[o(ReloadStatus::WouldReload)]));
        for bad in [
            ReloadStatus::Missing,
            ReloadStatus::Stopped,
            ReloadStatus::Ambiguous,
            ReloadStatus::Failed,
        ] {
            assert!(!outcomes_ok(&[o(ReloadStatus::Reloaded), o(bad)]), "{bad}");
        }
    }

    #[test]
    fn quoted_output_is_printable_and_bounded() {
        assert_eq!(quote_output(b""), "");
        assert_eq!(
            quote_output(b"\x1b[31mfatal:\r\n bad\n"),
            ": \"[31mfatal: bad\""
        );
        let long = vec![b'x'; 5000];
        assert!(quote_output(&long).chars().count() < MAX_QUOTED_OUTPUT + 10);
    }

    #[tokio::test]
    async fn an_absent_socket_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let err = connect(&socket).await.unwrap_err();
        assert!(matches!(err, ReloadError::SocketMissing { .. }), "{err:?}");
        assert!(err.to_string().contains(&socket.display().to_string()));
        // A socket file nobody listens on any more.
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        drop(listener);
        let err = connect(&socket).await.unwrap_err();
        assert!(matches!(err, ReloadError::SocketRefused { .. }), "{err:?}");
        assert!(err.to_string().contains("start Docker"), "{err}");
    }
}
