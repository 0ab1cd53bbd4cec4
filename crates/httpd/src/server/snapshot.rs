//! The snapshot endpoints: `/snapshot/full` and `/snapshot/delta` (taken here, or forwarded to
//! the leader's sidecar while this one follows), `/snapshot/latest` and
//! `/snapshot/verify/latest`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::{Shared, parse_go_bool, to_json};
use crate::error::Error;
use crate::leader::{FORWARDED_HEADER, Role};
use crate::snapshots::{LatestJson, SnapshotControl, SnapshotJson};

/// Where a snapshot request is served.
enum Route {
    /// By this sidecar's snapshotter.
    Here,
    /// By the leader's sidecar at this base URL.
    Forward(String),
}

impl Shared {
    /// Decides who serves a snapshot request: here, or the leader's sidecar.
    fn route(&self, headers: &HeaderMap) -> Result<Route, Error> {
        let Some(role) = &self.config.leadership else {
            return Ok(Route::Here);
        };
        let role = role.borrow().clone();
        match role {
            Role::Leader => Ok(Route::Here),
            Role::Unknown => Err(Error::Unavailable(
                "this sidecar does not know which etcd member leads (etcd unreachable, or no quorum); try again later"
                    .into(),
            )),
            Role::Follower { .. } if headers.contains_key(FORWARDED_HEADER) => Err(Error::Unavailable(
                "forwarded here as to the leader's sidecar, but this etcd member no longer leads; try again".into(),
            )),
            Role::Follower { sidecar: Some(url), .. } => Ok(Route::Forward(url)),
            Role::Follower { sidecar: None, leader_name, leader_id } => Err(Error::Unavailable(format!(
                "etcd member {leader_name:?} ({leader_id:x}) leads, but where its sidecar listens is unknown; \
                 name it in --sidecar-endpoints"
            ))),
        }
    }

    fn upstream(&self) -> Result<&reqwest::Client, Error> {
        if let Some(c) = self.upstream.get() {
            return Ok(c);
        }
        let client = crate::leader::sidecar_client(self.config.peer_cacert.as_deref()).map_err(Error::Internal)?;
        Ok(self.upstream.get_or_init(|| client))
    }

    /// Forwards a snapshot request to the leader's sidecar at `base` after checking its
    /// `/healthz` (as the reference's reverse proxy does), passing the bearer token on, and
    /// returns its answer unchanged.
    async fn forward(&self, base: &str, method: Method, uri: &Uri, headers: &HeaderMap) -> Result<Response, Error> {
        let client = self.upstream()?;
        let health = client
            .get(format!("{base}/healthz"))
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("{base} does not answer: {e}")))?;
        if !health.status().is_success() {
            return Err(Error::Unavailable(format!(
                "the leader's sidecar at {base} is not ready (its /healthz answered {}); try again later",
                health.status().as_u16()
            )));
        }
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let mut request = client.request(method, format!("{base}{path}")).header(FORWARDED_HEADER, "1");
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let answer = request.send().await.map_err(|e| Error::Upstream(format!("{base}{path}: {e}")))?;
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let body =
            answer.bytes().await.map_err(|e| Error::Upstream(format!("{base}{path}: reading the answer: {e}")))?;
        info!(leader = base, path, status = status.as_u16(), "snapshot request forwarded to the leader's sidecar");
        let mut response = (status, body).into_response();
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        Ok(response)
    }

    /// What both snapshot triggers do once the request is authorized and understood: refuse
    /// without a store or while initializing, forward to the leader's sidecar on a follower,
    /// else `take` this sidecar's snapshot. Server-side failures are kept for the status page
    /// as `what`'s.
    async fn trigger<Fut>(
        &self,
        what: &str,
        method: Method,
        uri: &Uri,
        headers: &HeaderMap,
        take: impl FnOnce(Arc<dyn SnapshotControl>) -> Fut,
    ) -> Result<Response, Error>
    where
        Fut: Future<Output = Result<Response, Error>>,
    {
        let ctl = self.snapshots()?.clone();
        self.refuse_while_initializing()?;
        if let Route::Forward(base) = self.route(headers)? {
            return self.forward(&base, method, uri, headers).await.inspect_err(|e| self.record(what, e));
        }
        take(ctl).await.inspect_err(|e| self.record(what, e))
    }
}

pub(super) async fn snapshot_full(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    s.authorize(&headers)?;
    let is_final = match q.get("final").map(String::as_str) {
        None | Some("") => false,
        Some(v) => parse_go_bool(v)
            .ok_or_else(|| Error::BadRequest(format!("final={v:?} is not a boolean (true or false)")))?,
    };
    s.trigger("full snapshot", method, &uri, &headers, |ctl| async move {
        ctl.full(is_final).await.and_then(|snap| to_json(&SnapshotJson::from(&snap)))
    })
    .await
}

pub(super) async fn snapshot_delta(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    s.authorize(&headers)?;
    s.trigger("delta snapshot", method, &uri, &headers, |ctl| async move {
        ctl.delta().await.and_then(|snap| to_json(&snap.as_ref().map(SnapshotJson::from)))
    })
    .await
}

pub(super) async fn snapshot_latest(State(s): State<Arc<Shared>>) -> Result<Response, Error> {
    let ctl = s.snapshots()?;
    match ctl.latest().await {
        Ok(latest) => to_json(&LatestJson::from(&latest)),
        Err(e) => {
            s.record("latest snapshots", &e);
            Err(e)
        }
    }
}

/// `/snapshot/verify/latest`: the newest scheduled verification as JSON (`null` before the
/// first finishes); on a follower, the leader's sidecar's answer.
pub(super) async fn verify_latest(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let Some(feed) = &s.config.verification else {
        return Err(Error::NotFound(
            "scheduled verification is off on this server (--verification-period); `etcdbrctl verify` runs one".into(),
        ));
    };
    if let Route::Forward(base) = s.route(&headers)? {
        return s.forward(&base, method, &uri, &headers).await.inspect_err(|e| s.record("verification", e));
    }
    let latest = feed.results.borrow().clone();
    to_json(&latest.as_deref())
}
