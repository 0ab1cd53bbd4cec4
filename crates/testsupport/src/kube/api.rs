//! The API's semantics: authentication and permissions, routing to the Lease verbs, conflicts
//! and `resourceVersion`s, merge patches, validation of a Lease as the API server decodes it, and
//! the `Status` objects of its errors (the table in [`super`]'s docs).

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::wire::HttpRequest;
use super::{API_VERSION, GROUP, Inner, Request, State};

/// An error answer: status code and message (turned into a `Status` object).
type Failure = (u16, String, &'static str, Option<Value>);

fn status_body(code: u16, message: &str, reason: &str, details: Option<Value>) -> String {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s.to_string()
}

fn details(name: &str) -> Option<Value> {
    Some(json!({"name": name, "group": GROUP, "kind": "leases"}))
}

fn not_found(name: &str) -> Failure {
    (404, format!("leases.{GROUP} \"{name}\" not found"), "NotFound", details(name))
}

fn conflict(name: &str) -> Failure {
    (
        409,
        format!(
            "Operation cannot be fulfilled on leases.{GROUP} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        "Conflict",
        details(name),
    )
}

fn bad_request(message: String) -> Failure {
    (400, message, "BadRequest", None)
}

/// Answers one request: status, body and `Warning` texts; logs it.
pub(super) fn handle(inner: &Inner, req: &HttpRequest) -> (u16, String, Vec<String>) {
    let mut st = inner.state();
    let mut warnings = Vec::new();
    let outcome = route(&mut st, req, &mut warnings);
    let (status, body) = match outcome {
        Ok((code, v)) => (code, v.to_string()),
        Err((code, msg, reason, det)) => (code, status_body(code, &msg, reason, det)),
    };
    st.log.push(Request {
        at: SystemTime::now(),
        method: req.method.clone(),
        path: req.target.clone(),
        content_type: req.header("content-type").map(str::to_string),
        body: String::from_utf8_lossy(&req.body).into_owned(),
        status,
    });
    (status, body, warnings)
}

fn route(st: &mut State, req: &HttpRequest, warnings: &mut Vec<String>) -> Result<(u16, Value), Failure> {
    let token = req.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
    if !token.is_some_and(|t| st.tokens.iter().any(|ok| ok == t)) {
        return Err((401, "Unauthorized".into(), "Unauthorized", None));
    }
    let path = req.target.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (ns, name) = match segs.as_slice() {
        ["apis", g, "v1", "namespaces", ns, "leases"] if *g == GROUP => (ns.to_string(), None),
        ["apis", g, "v1", "namespaces", ns, "leases", name] if *g == GROUP => (ns.to_string(), Some(name.to_string())),
        _ => {
            return Err((404, "the server could not find the requested resource".into(), "NotFound", None));
        }
    };
    let verb = match (req.method.as_str(), name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        _ => return Err((405, format!("{} is not allowed here", req.method), "MethodNotAllowed", None)),
    };
    if st.forbidden.contains(verb) {
        let what = name
            .as_deref()
            .map(|n| format!("leases.{GROUP} \"{n}\" is forbidden"))
            .unwrap_or_else(|| format!("leases.{GROUP} is forbidden"));
        return Err((
            403,
            format!(
                "{what}: User \"system:serviceaccount:{ns}:etcd\" cannot {verb} resource \"leases\" in API group \"{GROUP}\" in the namespace \"{ns}\""
            ),
            "Forbidden",
            Some(json!({"name": name.clone().unwrap_or_default(), "group": GROUP, "kind": "leases"})),
        ));
    }
    let body = || -> Result<Value, Failure> {
        serde_json::from_slice(&req.body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))
    };
    match (verb, name) {
        ("list", _) => {
            let items: Vec<Value> = st.leases.iter().filter(|((n, _), _)| *n == ns).map(|(_, v)| v.clone()).collect();
            Ok((
                200,
                json!({"apiVersion": API_VERSION, "kind": "LeaseList", "metadata": {"resourceVersion": st.last_rv.to_string()}, "items": items}),
            ))
        }
        ("create", _) => {
            let mut obj = body()?;
            warnings.extend(sanitize(&mut obj)?);
            create(st, &ns, obj)
        }
        ("get", Some(name)) => {
            let key = (ns.clone(), name.clone());
            let lease = st.leases.get(&key).cloned().ok_or_else(|| not_found(&name))?;
            let interfere = match st.interfere.get_mut(&key) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            };
            if interfere {
                let mut other = lease.clone();
                let n = other["metadata"]["annotations"]["stand-in/other-writer"]
                    .as_str()
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0);
                other["metadata"]["annotations"]["stand-in/other-writer"] = json!((n + 1).to_string());
                store(st, key, other)?;
            }
            Ok((200, lease))
        }
        ("delete", Some(name)) => {
            let lease = st.leases.remove(&(ns, name.clone())).ok_or_else(|| not_found(&name))?;
            Ok((200, lease))
        }
        ("update", Some(name)) => {
            let key = (ns.clone(), name.clone());
            let current = st.leases.get(&key).cloned().ok_or_else(|| not_found(&name))?;
            let mut obj = body()?;
            if obj["metadata"]["name"].as_str() != Some(name.as_str()) {
                return Err(bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    obj["metadata"]["name"]
                )));
            }
            match obj["metadata"]["resourceVersion"].as_str() {
                Some(rv) if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() => {
                    return Err(conflict(&name));
                }
                _ => {}
            }
            warnings.extend(sanitize(&mut obj)?);
            for k in ["uid", "creationTimestamp", "namespace"] {
                obj["metadata"][k] = current["metadata"][k].clone();
            }
            if same_but_version(&obj, &current) {
                return Ok((200, current));
            }
            store(st, key, obj)
        }
        ("patch", Some(name)) => {
            let key = (ns.clone(), name.clone());
            let ct = req.header("content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
            if ct != "application/merge-patch+json" && ct != "application/strategic-merge-patch+json" {
                return Err((
                    415,
                    format!("the stand-in serves merge patches only, not {ct:?}"),
                    "UnsupportedMediaType",
                    None,
                ));
            }
            let current = st.leases.get(&key).cloned().ok_or_else(|| not_found(&name))?;
            let patch = body()?;
            if !patch.is_object() {
                return Err(bad_request("a merge patch must be a JSON object".into()));
            }
            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                && Some(rv) != current["metadata"]["resourceVersion"].as_str()
            {
                return Err(conflict(&name));
            }
            let mut obj = current.clone();
            merge_patch(&mut obj, &patch);
            for k in ["name", "namespace", "uid", "creationTimestamp"] {
                if obj["metadata"][k] != current["metadata"][k] {
                    return Err((
                        422,
                        format!("Lease.{GROUP} \"{name}\" is invalid: metadata.{k}: Invalid value: field is immutable"),
                        "Invalid",
                        details(&name),
                    ));
                }
            }
            warnings.extend(sanitize(&mut obj)?);
            if same_but_version(&obj, &current) {
                return Ok((200, current));
            }
            store(st, key, obj)
        }
        _ => Err((405, "not allowed".into(), "MethodNotAllowed", None)),
    }
}

fn same_but_version(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

pub(super) fn create(st: &mut State, ns: &str, mut obj: Value) -> Result<(u16, Value), Failure> {
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return Err((
            422,
            "Lease.coordination.k8s.io is invalid: metadata.name: Required value".into(),
            "Invalid",
            None,
        ));
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(n) if n != ns => {
            return Err(bad_request(format!(
                "the namespace of the object ({n}) does not match the namespace on the request ({ns})"
            )));
        }
        _ => {}
    }
    let key = (ns.to_string(), name.clone());
    if st.leases.contains_key(&key) {
        return Err((409, format!("leases.{GROUP} \"{name}\" already exists"), "AlreadyExists", details(&name)));
    }
    st.next_uid += 1;
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", st.next_uid));
    obj["metadata"]["creationTimestamp"] = json!(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
    let (_, lease) = store(st, key, obj)?;
    Ok((201, lease))
}

/// Stores a Lease under the next resourceVersion and returns it.
pub(super) fn store(st: &mut State, key: (String, String), mut obj: Value) -> Result<(u16, Value), Failure> {
    st.last_rv += 1;
    obj["apiVersion"] = json!(API_VERSION);
    obj["kind"] = json!("Lease");
    obj["metadata"]["resourceVersion"] = json!(st.last_rv.to_string());
    st.leases.insert(key, obj.clone());
    Ok((200, obj))
}

/// Checks and normalizes a Lease as the API server decodes it; returns the warnings.
fn sanitize(obj: &mut Value) -> Result<Vec<String>, Failure> {
    let mut warnings = Vec::new();
    let Some(o) = obj.as_object_mut() else {
        return Err(bad_request("a Lease must be a JSON object".into()));
    };
    let cannot = |what: String| bad_request(format!("Lease in version \"v1\" cannot be handled as a Lease: {what}"));
    if let Some(v) = o.get("apiVersion").and_then(Value::as_str)
        && v != API_VERSION
    {
        return Err(cannot(format!("apiVersion {v:?} is not {API_VERSION}")));
    }
    if let Some(k) = o.get("kind").and_then(Value::as_str)
        && k != "Lease"
    {
        return Err(cannot(format!("kind {k:?} is not Lease")));
    }
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(cannot("metadata must be an object".into()));
    };
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {
                meta.remove(field);
            }
            Some(Value::Object(m)) => {
                if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(cannot(format!("metadata.{field}.{k}: expected a string")));
                }
            }
            Some(_) => return Err(cannot(format!("metadata.{field}: expected a map of strings"))),
        }
    }
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    if spec.is_null() {
        *spec = json!({});
    }
    let Some(spec) = spec.as_object_mut() else {
        return Err(cannot("spec must be an object".into()));
    };
    let keys: Vec<String> = spec.keys().cloned().collect();
    for k in keys {
        let v = spec[&k].clone();
        if v.is_null() {
            spec.remove(&k);
            continue;
        }
        let ok = match k.as_str() {
            "holderIdentity" | "strategy" | "preferredHolder" => v.is_string(),
            "leaseDurationSeconds" | "leaseTransitions" => v.is_i64(),
            "acquireTime" | "renewTime" => {
                let s = v.as_str().ok_or_else(|| cannot(format!("spec.{k}: expected a string")))?;
                let utc = micro_time_utc(s).ok_or_else(|| {
                    cannot(format!(
                        "parsing time {s:?} as \"2006-01-02T15:04:05.000000Z07:00\": not RFC 3339 with microseconds"
                    ))
                })?;
                spec.insert(k.clone(), json!(utc));
                true
            }
            _ => {
                warnings.push(format!("unknown field \"spec.{k}\""));
                spec.remove(&k);
                true
            }
        };
        if !ok {
            return Err(cannot(format!("spec.{k}: wrong type ({v})")));
        }
    }
    Ok(warnings)
}

/// Parses `metav1.MicroTime` text (`YYYY-MM-DDTHH:MM:SS.ffffff` then `Z` or `±HH:MM`, exactly
/// six fractional digits) and returns it in UTC as the API server re-encodes it; `None` when
/// Go's parser would refuse it.
pub fn micro_time_utc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 27 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) { t.parse().ok() } else { None }
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'.' {
        return None;
    }
    let (y, mo, d, h, mi, sec, micros) = (
        digits(0..4)?,
        digits(5..7)?,
        digits(8..10)?,
        digits(11..13)?,
        digits(14..16)?,
        digits(17..19)?,
        digits(20..26)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let offset = match &s[26..] {
        "Z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (digits(27..29)? * 3600 + digits(30..32)? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let unix = days * 86400 + h * 3600 + mi * 60 + sec - offset;
    let t =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).ok()?) + Duration::from_micros(micros as u64);
    Some(humantime::format_rfc3339_micros(t).to_string())
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_is_parsed_as_go_parses_it() {
        assert_eq!(micro_time_utc("2026-03-01T10:20:30.123456Z").as_deref(), Some("2026-03-01T10:20:30.123456Z"));
        assert_eq!(micro_time_utc("2026-03-01T00:20:30.000001+02:00").as_deref(), Some("2026-02-28T22:20:30.000001Z"));
        assert_eq!(micro_time_utc("1970-01-01T00:00:00.000000Z").as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        for bad in [
            "2026-03-01T10:20:30Z",
            "2026-03-01T10:20:30.123Z",
            "2026-03-01T10:20:30.123456789Z",
            "2026-03-01 10:20:30.123456Z",
            "2026-13-01T10:20:30.123456Z",
            "2026-03-01T10:20:30.123456",
        ] {
            assert_eq!(micro_time_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_merge_patch_merges_objects_and_removes_nulls() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"});
        merge_patch(&mut v, &json!({"a": {"b": null, "f": 3}, "d": [3], "e": null}));
        assert_eq!(v, json!({"a": {"c": 2, "f": 3}, "d": [3]}));
    }
}
