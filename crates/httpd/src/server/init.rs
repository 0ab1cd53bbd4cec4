//! `/initialization/start` and `/initialization/status`: the two ends of the initialization
//! state machine ([`InitStatus`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use tracing::{error, info};
use validator::{Action, Mode, Outcome};

use super::{InitStatus, Shared};
use crate::error::Error;

pub(super) async fn init_start(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, Error> {
    s.authorize(&headers)?;
    let mode = match q.get("mode").map(String::as_str) {
        None | Some("") => s.config.default_mode,
        Some("full") => Mode::Full,
        Some("sanity") => Mode::Sanity,
        Some(other) => return Err(Error::BadRequest(format!("unknown mode {other:?}: use full or sanity"))),
    };
    let started = s.status.send_if_modified(|st| {
        if *st == InitStatus::New {
            *st = InitStatus::Progress;
            true
        } else {
            false
        }
    });
    if !started {
        // As the reference: a second start while one runs (or before its result was read) is a
        // no-op that still answers 200.
        info!(status = s.status.borrow().as_str(), "initialization already started; nothing to do");
        return Ok(StatusCode::OK);
    }
    s.healthy.store(false, Ordering::SeqCst);
    s.starts.send_modify(|n| *n += 1);
    info!(mode = %mode, "initialization started");
    let shared = s.clone();
    tokio::spawn(async move {
        let mut opts = shared.init.options.clone();
        opts.mode = mode;
        let initializer = shared.init.initializer.clone();
        // A separate task, so even a panic inside becomes `Failed` instead of a stuck `Progress`.
        let run = tokio::spawn(async move { initializer.initialize(&opts).await });
        let (status, line) = match run.await {
            Ok(Ok(outcome)) => {
                let line = summarize(&outcome);
                info!("initialization succeeded: {line}");
                (InitStatus::Successful, line)
            }
            Ok(Err(e)) => {
                error!(error = %e, "initialization failed");
                shared.remember(format!("initialization: {e}"));
                (InitStatus::Failed, format!("failed: {e}"))
            }
            Err(e) => {
                error!(error = %e, "initialization task died");
                shared.remember(format!("initialization: {e}"));
                (InitStatus::Failed, format!("failed: the initialization task died ({e})"))
            }
        };
        if let Ok(mut ev) = shared.events.lock() {
            ev.last_initialization = Some(format!("{} ({line})", humantime::format_rfc3339_seconds(SystemTime::now())));
        }
        shared.status.send_replace(status);
    });
    Ok(StatusCode::OK)
}

fn summarize(o: &Outcome) -> String {
    let v = &o.validation;
    let action = match &o.action {
        Action::Nothing => "data dir kept".to_string(),
        Action::Restored(r) => {
            format!("restored revision {} from {} + {} delta(s)", r.stats.revision, r.full, r.deltas.len())
        }
        Action::FreshStart => "no backups to restore from: etcd starts empty".to_string(),
        Action::JoinedAsLearner { member_id, removed: None } => {
            format!("joined the running cluster as learner {member_id:x}; etcd syncs from the leader")
        }
        Action::JoinedAsLearner { member_id, removed: Some(old) } => {
            format!("removed member {old:x} and added it back as learner {member_id:x}; etcd syncs from the leader")
        }
    };
    format!("{} validation: {}; {action}", v.mode, v.verdict)
}

pub(super) async fn init_status(State(s): State<Arc<Shared>>) -> String {
    let mut seen = InitStatus::New;
    s.status.send_if_modified(|st| {
        seen = *st;
        if matches!(st, InitStatus::Successful | InitStatus::Failed) {
            *st = InitStatus::New;
            true
        } else {
            false
        }
    });
    seen.as_str().to_string()
}
