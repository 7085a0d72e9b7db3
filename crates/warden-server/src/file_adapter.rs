//! The file adapter: renders the instances of one service that take traffic into a file from a
//! template (an nginx `upstream` block, a file-provider config of another proxy, a plain list)
//! and runs a reload command whenever the file's contents change.
//!
//! The template is text with one `{{range}}…{{end}}` section, repeated for every `serving`
//! instance in task order; inside it `{{addr}}` (`host:port`), `{{host}}`, `{{port}}`,
//! `{{task}}` and `{{agent}}` are replaced; anywhere, `{{service}}` is the service name.
//! Draining and removed instances are left out: a file-driven proxy has no drain state, and a
//! reload lets its open connections finish.
//!
//! The file is written atomically (a temporary file, then a rename) and only when its contents
//! change; a failed write or reload is retried on the next round (every `poll`, or at once on
//! a registry change).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warden_core::{ConfigError, duration_serde};

use crate::view::{ControlApi, ServiceInfo};

/// One file following one service (`[[file_adapter]]` in the server's config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdapterConfig {
    /// The service to follow (its name in `GET /v1/services`). Required.
    pub service: String,
    /// The file to write. Required.
    pub path: PathBuf,
    /// The template, with one `{{range}}…{{end}}` section. Required.
    pub template: String,
    /// Shell command run (`sh -c`) after every change of the file, e.g. `nginx -s reload`.
    #[serde(default)]
    pub reload: Option<String>,
    /// How often the file is checked even without registry changes (default 1 s).
    #[serde(default = "default_poll", with = "duration_serde")]
    pub poll: Duration,
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

impl FileAdapterConfig {
    /// Reject settings that can never work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.service.trim().is_empty() {
            return Err(ConfigError::new(
                "file_adapter.service",
                "must not be empty",
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::new("file_adapter.path", "must not be empty"));
        }
        split_template(&self.template)?;
        if self.reload.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(ConfigError::new(
                "file_adapter.reload",
                "must not be empty when set",
            ));
        }
        if self.poll.is_zero() {
            return Err(ConfigError::new(
                "file_adapter.poll",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// The template's text before, inside and after its `{{range}}…{{end}}` section.
fn split_template(t: &str) -> Result<(&str, &str, &str), ConfigError> {
    let bad = |why| ConfigError::new("file_adapter.template", why);
    let (head, rest) = t
        .split_once("{{range}}")
        .ok_or_else(|| bad("needs one {{range}}…{{end}} section"))?;
    let (body, tail) = rest
        .split_once("{{end}}")
        .ok_or_else(|| bad("{{range}} without {{end}}"))?;
    if tail.contains("{{range}}") || tail.contains("{{end}}") || head.contains("{{end}}") {
        return Err(bad("only one {{range}}…{{end}} section is allowed"));
    }
    Ok((head, body, tail))
}

/// The file's contents for `service` (none: the service has no instances yet).
pub fn render(
    template: &str,
    name: &str,
    service: Option<&ServiceInfo>,
) -> Result<String, ConfigError> {
    let (head, body, tail) = split_template(template)?;
    let mut serving: Vec<_> = service
        .map(|s| {
            s.instances
                .iter()
                .filter(|i| i.state == "serving")
                .collect()
        })
        .unwrap_or_default();
    serving.sort_by(|a, b| a.task.cmp(&b.task));
    let mut out = head.replace("{{service}}", name);
    for i in serving {
        let (host, port) = i.addr.rsplit_once(':').unwrap_or((i.addr.as_str(), ""));
        out.push_str(
            &body
                .replace("{{addr}}", &i.addr)
                .replace("{{host}}", host)
                .replace("{{port}}", port)
                .replace("{{task}}", &i.task)
                .replace("{{agent}}", &i.agent)
                .replace("{{service}}", name),
        );
    }
    out.push_str(&tail.replace("{{service}}", name));
    Ok(out)
}

/// Why one round of the file adapter failed.
#[derive(Debug, thiserror::Error)]
pub enum FileAdapterError {
    /// Rendering failed (bad template).
    #[error("{0}")]
    Template(#[from] ConfigError),
    /// Writing the file failed.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The reload command failed or did not finish within 30 s.
    #[error("reload `{command}`: {why}")]
    Reload {
        /// The command.
        command: String,
        /// Its exit status or error.
        why: String,
    },
}

/// Render, and when the contents changed, write the file and run the reload command. Returns
/// whether the file changed.
pub async fn sync_once(
    cfg: &FileAdapterConfig,
    api: &dyn ControlApi,
    last: &mut Option<String>,
) -> Result<bool, FileAdapterError> {
    let services = api.services();
    let service = services.services.iter().find(|s| s.name == cfg.service);
    apply(cfg, service, last).await
}

/// [`sync_once`] for a given state of the service.
pub async fn apply(
    cfg: &FileAdapterConfig,
    service: Option<&ServiceInfo>,
    last: &mut Option<String>,
) -> Result<bool, FileAdapterError> {
    let text = render(&cfg.template, &cfg.service, service)?;
    if last.as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    let write_err = |source| FileAdapterError::Write {
        path: cfg.path.display().to_string(),
        source,
    };
    let mut tmp = cfg.path.clone().into_os_string();
    tmp.push(".warden-tmp");
    tokio::fs::write(&tmp, &text).await.map_err(write_err)?;
    tokio::fs::rename(&tmp, &cfg.path)
        .await
        .map_err(write_err)?;
    if let Some(reload) = &cfg.reload {
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(reload)
            .kill_on_drop(true)
            .status();
        let why = match tokio::time::timeout(Duration::from_secs(30), run).await {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => Some(status.to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out after 30 s".to_string()),
        };
        if let Some(why) = why {
            return Err(FileAdapterError::Reload {
                command: reload.clone(),
                why,
            });
        }
    }
    *last = Some(text);
    Ok(true)
}

/// Keep `cfg.path` in step with `cfg.service` until `cancel` fires.
pub async fn run(cfg: FileAdapterConfig, api: Arc<dyn ControlApi>, cancel: CancellationToken) {
    let mut watch = api.watch_services();
    let mut last = None;
    let mut failing = false;
    info!(service = %cfg.service, path = %cfg.path.display(), "file adapter started");
    loop {
        match sync_once(&cfg, api.as_ref(), &mut last).await {
            Ok(changed) => {
                if changed || failing {
                    info!(path = %cfg.path.display(), "file in step");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(path = %cfg.path.display(), error = %e, "file adapter out of step; will retry");
                }
                failing = true;
                last = None;
            }
        }
        let changed = async {
            match watch.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(cfg.poll) => {}
            () = changed, if !failing => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::view::InstanceInfo;

    fn inst(task: &str, addr: &str, state: &str) -> InstanceInfo {
        InstanceInfo {
            task: task.into(),
            epoch: 1,
            agent: "agent-1#1".into(),
            addr: addr.into(),
            state: state.into(),
            reason: String::new(),
            since_unix_ms: 0,
        }
    }

    #[test]
    fn renders_serving_instances_in_task_order() {
        let svc = ServiceInfo {
            name: "web".into(),
            index: 4,
            instances: vec![
                inst("web/1", "10.0.0.2:4001", "serving"),
                inst("web/0", "10.0.0.1:4000", "serving"),
                inst("web/2", "10.0.0.3:4002", "draining"),
                inst("web/3", "10.0.0.4:4003", "removed"),
            ],
        };
        let t = "upstream {{service}} {\n{{range}}  server {{addr}}; # {{task}} on {{host}} port {{port}}\n{{end}}}\n";
        assert_eq!(
            render(t, "web", Some(&svc)).unwrap(),
            "upstream web {\n  server 10.0.0.1:4000; # web/0 on 10.0.0.1 port 4000\n  server 10.0.0.2:4001; # web/1 on 10.0.0.2 port 4001\n}\n"
        );
        assert_eq!(render(t, "web", None).unwrap(), "upstream web {\n}\n");
    }

    #[test]
    fn bad_templates_name_the_field() {
        for t in [
            "no section",
            "{{range}} x",
            "{{range}}a{{end}}{{range}}b{{end}}",
        ] {
            let e = split_template(t).unwrap_err();
            assert!(e.to_string().contains("file_adapter.template"), "{e}");
        }
        let cfg = FileAdapterConfig {
            service: "web".into(),
            path: "/tmp/x".into(),
            template: "{{range}}{{addr}}\n{{end}}".into(),
            reload: Some(" ".into()),
            poll: Duration::from_secs(1),
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("file_adapter.reload")
        );
    }

    #[tokio::test]
    async fn writes_the_file_and_reloads_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upstream.conf");
        let count = dir.path().join("reloads");
        let cfg = FileAdapterConfig {
            service: "web".into(),
            path: path.clone(),
            template: "{{range}}{{addr}}\n{{end}}".into(),
            reload: Some(format!("echo reload >> {}", count.display())),
            poll: Duration::from_secs(1),
        };
        let svc = ServiceInfo {
            name: "web".into(),
            index: 1,
            instances: vec![inst("web/0", "127.0.0.1:4000", "serving")],
        };
        let mut last = None;
        assert!(apply(&cfg, Some(&svc), &mut last).await.unwrap());
        assert!(!apply(&cfg, Some(&svc), &mut last).await.unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:4000\n");
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "reload\n");
        // A failing reload is an error and the next round tries again.
        let failing = FileAdapterConfig {
            reload: Some("exit 3".into()),
            ..cfg.clone()
        };
        let mut last = None;
        assert!(matches!(
            apply(&failing, Some(&svc), &mut last).await,
            Err(FileAdapterError::Reload { .. })
        ));
        assert!(last.is_none());
    }
}
