//! `/config` (etcd's config file made concrete for this member) and `/member/data` (what this
//! member's data dir holds, for the other members' sidecars).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use brcore::cluster::LiveCluster;
use tracing::warn;

use super::{DEFAULT_ETCD_CONF, Shared, to_json};
use crate::error::Error;
use crate::etcdconf;

/// How long `/config` waits for a quorum to list the running members (the reference tries
/// twice, 2 s apart); without one, the config's own cluster is served (a bootstrap).
const CONFIG_LIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

pub(super) async fn config(State(s): State<Arc<Shared>>) -> Result<Response, Error> {
    let path = s.config.etcd_conf.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_CONF));
    let live = match &s.config.cluster {
        Some(cluster) => match cluster.spec() {
            Ok(spec) if spec.is_multi_member() => cluster.members(&spec).live_within(CONFIG_LIVE_WAIT).await,
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "cannot read the cluster for /config; serving the config's own cluster");
                None
            }
        },
        None => None,
    };
    let result =
        render_config(&path, s.config.pod_name.as_deref(), s.config.config_output.as_deref(), live.as_ref()).await;
    match result {
        Ok(text) => Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response()),
        Err(e) => {
            s.record("config", &e);
            Err(e)
        }
    }
}

async fn render_config(
    path: &Path,
    pod_name: Option<&str>,
    output: Option<&Path>,
    live: Option<&LiveCluster>,
) -> Result<String, Error> {
    let shown = path.display().to_string();
    let text = tokio::fs::read_to_string(path).await.map_err(|e| Error::EtcdConfig {
        path: shown.clone(),
        why: format!("cannot read it ({e}); set ETCD_CONF to the etcd config file"),
    })?;
    let rendered =
        etcdconf::render_for_member(&text, pod_name, live).map_err(|why| Error::EtcdConfig { path: shown, why })?;
    if let Some(out) = output {
        write_atomically(out, rendered.as_bytes())
            .await
            .map_err(|e| Error::Backup(brcore::error::Error::io(out, e)))?;
    }
    Ok(rendered)
}

/// Writes `bytes` to a temp file beside `path` and renames it over `path`, so a reader never
/// sees half a config.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    tokio::fs::write(&tmp, bytes).await?;
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(())
}

/// `/member/data`: what this member's data dir holds, for the other members' sidecars (see
/// `validator::member_data`); read-only.
pub(super) async fn member_data(State(s): State<Arc<Shared>>) -> Result<Response, Error> {
    let member = match &s.config.cluster {
        Some(c) => c.spec().map(|spec| spec.this).unwrap_or_else(|_| s.init.options.plan.name.clone()),
        None => s.init.options.plan.name.clone(),
    };
    let data_dir = s.init.options.plan.data_dir.clone();
    let report = tokio::task::spawn_blocking(move || validator::data_report(&data_dir, &member))
        .await
        .map_err(|e| Error::Internal(format!("the data dir check died: {e}")))?;
    to_json(&report)
}
