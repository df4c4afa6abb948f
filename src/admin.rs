//! The admin listener: `/healthz`, `/metrics` (Prometheus text), `/stats`
//! (JSON), and the invalidation API (`POST /invalidate`, `POST
//! /invalidate/all`, `GET /bans`; see [`crate::invalidate`]). Control plane
//! only: it runs on its own thread and port and never touches the request
//! path. One request per connection, answered in turn, each bounded by a
//! read/write timeout; a request body by `limits.admin_body_bytes_max`.
//!
//! Access: every call but `/healthz` and `/metrics` needs
//! `Authorization: Bearer TOKEN` when a token is configured (`admin.token`
//! or `RINGCACHE_ADMIN_TOKEN`), compared in constant time; a wrong or
//! missing one gets 401. With no token configured the invalidation API
//! answers 403 (and `/stats` stays open, as it is read-only). With
//! `admin.hmac_key` set, every `POST /invalidate*` must also be signed
//! (timestamp and HMAC of the body, see [`crate::admin_auth`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::admin_auth::{Signatures, SIGNATURE_FIELD, TIMESTAMP_FIELD};
use crate::invalidate::{Invalidator, Refusal, PURGE_KINDS};
use crate::metrics::{
    Counter, Histogram, HistogramSnapshot, InvalidationGauges, Metrics, StoreGauges,
    CACHE_OUTCOMES, STATUS_CLASSES,
};
use crate::store::SharedStore;

/// Bytes of an admin request head we read at most.
pub const ADMIN_HEAD_BYTES_MAX: usize = 8 << 10;
/// Time one admin connection may take to send its request or read the answer.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin thread reads.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub invalidator: Arc<Invalidator>,
    /// `limits.admin_body_bytes_max`.
    pub body_bytes_max: usize,
    pub store: Arc<SharedStore>,
    /// Set once every worker accepts; `/healthz` answers 503 before.
    pub ready: Arc<AtomicBool>,
    /// Set when shutdown begins; `/healthz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// The invalidation bus (`--bus`): what this node applies is published
    /// to the others.
    pub bus: Option<Arc<crate::bus::Bus>>,
}

/// Serve admin requests on `listener` until the process exits; a second
/// thread keeps the invalidation state tidy (see [`Invalidator::maintain`]).
pub fn spawn(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    let invalidator = Arc::clone(&state.invalidator);
    std::thread::Builder::new()
        .name("ringcache-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(crate::config::INVALIDATION_UPKEEP_INTERVAL);
            let dropped = invalidator.maintain();
            if dropped > 0 {
                log::debug!("tag index: {dropped} entries of objects no longer stored dropped");
            }
        })?;
    std::thread::Builder::new()
        .name("ringcache-admin".into())
        .spawn(move || {
            // Signatures accepted inside the window (replays are refused).
            let signatures = Signatures::default();
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_one(stream, &state, &signatures) {
                            log::debug!("admin: {e}");
                        }
                    }
                    Err(e) => log::warn!("admin: accept: {e}"),
                }
            }
        })
        .map(drop)
}

fn serve_one(
    mut stream: TcpStream,
    state: &AdminState,
    signatures: &Signatures,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut buf = vec![0u8; ADMIN_HEAD_BYTES_MAX];
    let mut len = 0;
    let (call, path) = loop {
        if len == buf.len() {
            return respond(&mut stream, 431, "text/plain", "request head too large\n");
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let call = Call::read(&req, head_len);
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                if path == "/invalidate" || path == "/invalidate/all" {
                    break (call, path.to_string());
                }
                if req.method != Some("GET") && req.method != Some("HEAD") {
                    return respond(&mut stream, 405, "text/plain", "method not allowed\n");
                }
                break (call, path.to_string());
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return respond(&mut stream, 400, "text/plain", "bad request\n"),
        }
    };
    let path = path.as_str();
    if !matches!(path, "/healthz" | "/metrics") {
        let api = path != "/stats";
        // The token now (a SIGHUP reload may replace it).
        let access = state.invalidator.access();
        let granted = authorize(access.admin_token.as_deref(), call.bearer.as_deref(), api);
        drop(access);
        match granted {
            Access::Granted => {}
            Access::NoToken => {
                return respond(
                    &mut stream,
                    403,
                    "application/json",
                    &error_json(
                        "no admin token is configured (admin.token or RINGCACHE_ADMIN_TOKEN)",
                    ),
                )
            }
            Access::Denied => {
                return respond(
                    &mut stream,
                    401,
                    "application/json",
                    &error_json("missing or wrong Authorization: Bearer token"),
                )
            }
        }
    }
    match path {
        "/invalidate" | "/invalidate/all" => invalidate(
            &mut stream,
            state,
            signatures,
            &call,
            &buf[..len],
            path == "/invalidate/all",
        ),
        "/bans" => {
            let body = bans_json(&state.invalidator);
            respond(&mut stream, 200, "application/json", &body)
        }
        "/healthz" => {
            // Acquire pairs with the Release stores in runtime::serve.
            if state.draining.load(Ordering::Acquire) {
                respond(&mut stream, 503, "text/plain", "draining\n")
            } else if state.ready.load(Ordering::Acquire) {
                respond(&mut stream, 200, "text/plain", "ok\n")
            } else {
                respond(&mut stream, 503, "text/plain", "starting\n")
            }
        }
        "/metrics" => {
            let body = metrics_text(state);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body)
        }
        "/stats" => {
            let g = gauges(&state.store);
            let m = &state.metrics;
            let body = format!(
                "{{\"requests\":{},\"hits\":{},\"misses\":{},\"passes\":{},\"origin_fetches\":{},\"stored\":{},\"store\":{{\"bytes_used\":{},\"bytes_max\":{},\"items\":{},\"evictions\":{}}},{},\"metrics\":{}}}\n",
                m.total(Counter::Requests),
                m.total(Counter::Hits),
                m.total(Counter::Misses),
                m.total(Counter::Passes),
                m.total(Counter::OriginFetches),
                m.total(Counter::Stored),
                g.bytes_used,
                g.bytes_max,
                g.items,
                g.evictions,
                traffic_json(m),
                crate::metrics::text_to_json(&metrics_text(state))
            );
            respond(&mut stream, 200, "application/json", &body)
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n"),
    }
}

/// The whole `/metrics` page (Prometheus text).
fn metrics_text(state: &AdminState) -> String {
    let mut body = state.metrics.render(&gauges(&state.store));
    crate::metrics::render_invalidation(&mut body, &invalidation_gauges(&state.invalidator));
    if let Some(g) = state.invalidator.ban_log() {
        crate::metrics::render_ban_log(&mut body, &g);
    }
    crate::metrics::render_refresh(&mut body, &refresh_gauges(&state.invalidator));
    body
}

/// The figures `/metrics` shows beside the counters above, as JSON members:
/// responses by status class and by cache outcome, lease takeovers, origin
/// connections open, and each histogram's count, sum and p50/p90/p99 (the
/// upper bound of the bucket holding it; null beyond the last bucket).
fn traffic_json(m: &Metrics) -> String {
    let mut out = String::with_capacity(1024);
    let mut table = |name: &str, rows: &[(Counter, &str)]| {
        out.push_str(&format!("\"{name}\":{{"));
        for (i, (c, label)) in rows.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            out.push_str(&format!("{sep}\"{label}\":{}", m.total(*c)));
        }
        out.push_str("},");
    };
    table("responses_by_status", &STATUS_CLASSES);
    table("cache_status", &CACHE_OUTCOMES);
    out.push_str(&format!(
        "\"lease_takeovers\":{},\"origin_connections_open\":{},",
        m.total(Counter::LeaseTakeovers),
        m.origin_connections_open()
    ));
    // A duration bucket's values are at most its bound (whole µs below
    // 2^i); a count bucket's at most 2^i - 1.
    let summary = |h: &HistogramSnapshot, per_unit: f64| {
        let q = |q: f64| match h.quantile_bound(q) {
            u64::MAX => "null".to_string(),
            b if per_unit == 1.0 => format!("{}", b.saturating_sub(1)),
            b => format!("{}", b as f64 / per_unit),
        };
        format!(
            "{{\"count\":{},\"sum\":{},\"p50\":{},\"p90\":{},\"p99\":{}}}",
            h.count(),
            h.sum as f64 / per_unit,
            q(0.5),
            q(0.9),
            q(0.99)
        )
    };
    out.push_str(&format!(
        "\"request_duration_seconds\":{{\"hit\":{},\"miss\":{},\"pass\":{}}},\"origin_duration_seconds\":{},\"coalesce_wait_seconds\":{},\"coalesce_waiters_per_fill\":{}",
        summary(&m.histogram(Histogram::RequestHit), 1e6),
        summary(&m.histogram(Histogram::RequestMiss), 1e6),
        summary(&m.histogram(Histogram::RequestPass), 1e6),
        summary(&m.histogram(Histogram::Origin), 1e6),
        summary(&m.histogram(Histogram::CoalesceWait), 1e6),
        summary(&m.histogram(Histogram::CoalesceWaiters), 1.0),
    ));
    out
}

fn gauges(store: &SharedStore) -> StoreGauges {
    let u = store.usage();
    let r = store.recovery();
    StoreGauges {
        bytes_used: u.item_bytes,
        bytes_max: u.bytes_max,
        items: u.items,
        evictions: u.evictions,
        index_evictions: u.index_evictions,
        index_slots: u.index_slots,
        expirations: u.expirations,
        recovered: r.items_recovered,
        dropped: r.items_dropped,
        recovery_secs: r.open_time.as_secs_f64(),
        clockpro: store.policy_stats().map(|s| {
            [
                u64::from(s.hot_count),
                u64::from(s.cold_count),
                u64::from(s.test_count),
                u64::from(s.cold_target),
            ]
        }),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let challenge = if status == 401 {
        "WWW-Authenticate: Bearer\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// What the admin needs from a request head beyond its path.
struct Call {
    method: String,
    head_len: usize,
    /// `Some(n)`: a Content-Length of n; `None`: no (valid) Content-Length.
    content_length: Option<usize>,
    chunked: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead.
    expect_continue: bool,
    bearer: Option<String>,
    /// `Ringcache-Timestamp` and `Ringcache-Signature` (signed calls).
    timestamp: Option<String>,
    signature: Option<String>,
}

impl Call {
    fn read(req: &httparse::Request<'_, '_>, head_len: usize) -> Call {
        let mut call = Call {
            method: req.method.unwrap_or("").to_string(),
            head_len,
            content_length: None,
            chunked: false,
            expect_continue: false,
            bearer: None,
            timestamp: None,
            signature: None,
        };
        let mut lengths = 0;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                call.content_length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                call.chunked = true;
            } else if h.name.eq_ignore_ascii_case("expect") {
                call.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            } else if h.name.eq_ignore_ascii_case(TIMESTAMP_FIELD) {
                call.timestamp = std::str::from_utf8(h.value).ok().map(str::to_string);
            } else if h.name.eq_ignore_ascii_case(SIGNATURE_FIELD) {
                call.signature = std::str::from_utf8(h.value).ok().map(str::to_string);
            } else if h.name.eq_ignore_ascii_case("authorization") {
                let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                if let Some((scheme, token)) = v.split_once(' ') {
                    if scheme.eq_ignore_ascii_case("bearer") {
                        call.bearer = Some(token.trim().to_string());
                    }
                }
            }
        }
        if lengths > 1 {
            call.content_length = None;
        }
        call
    }
}

enum Access {
    Granted,
    /// No token configured: the invalidation API is closed (403).
    NoToken,
    /// A token is configured and the call did not bring it (401).
    Denied,
}

/// `api`: the invalidation API (closed without a token) rather than `/stats`.
fn authorize(configured: Option<&str>, given: Option<&str>, api: bool) -> Access {
    match (configured, given) {
        (None, _) if api => Access::NoToken,
        (None, _) => Access::Granted,
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => {
            Access::Granted
        }
        (Some(_), _) => Access::Denied,
    }
}

/// Compare without an early exit, so the time taken does not tell how
/// many leading bytes matched. The length is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn error_json(msg: &str) -> String {
    let mut s = serde_json::json!({ "error": msg }).to_string();
    s.push('\n');
    s
}

/// `POST /invalidate` (the body is an [`crate::invalidate::InvalidationRequest`])
/// or `POST /invalidate/all` (no body needed).
fn invalidate(
    stream: &mut TcpStream,
    state: &AdminState,
    signatures: &Signatures,
    call: &Call,
    received: &[u8],
    all: bool,
) -> std::io::Result<()> {
    if call.method != "POST" {
        return respond(stream, 405, "application/json", &error_json("use POST"));
    }
    if call.chunked {
        return respond(
            stream,
            411,
            "application/json",
            &error_json("send the body with a Content-Length"),
        );
    }
    let length = match call.content_length {
        Some(n) => n,
        None if all => 0,
        None => {
            return respond(
                stream,
                411,
                "application/json",
                &error_json("a Content-Length is needed"),
            )
        }
    };
    if length > state.body_bytes_max {
        return respond(
            stream,
            413,
            "application/json",
            &error_json("body larger than limits.admin_body_bytes_max"),
        );
    }
    let mut body = received[call.head_len.min(received.len())..].to_vec();
    body.truncate(length);
    let mut at = body.len();
    if at < length && call.expect_continue {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    body.resize(length, 0);
    while at < length {
        let n = stream.read(&mut body[at..])?;
        if n == 0 {
            return Ok(()); // the caller gave up
        }
        at += n;
    }
    let inv = &state.invalidator;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.ip().to_string());
    // The key and window now (a SIGHUP reload may replace them).
    let access = inv.access();
    let signing = access
        .hmac_key
        .clone()
        .map(|k| (k, access.hmac_window.as_secs()));
    drop(access);
    if let Some((key, window_secs)) = signing {
        let checked = signatures.verify(
            key.as_bytes(),
            window_secs,
            call.timestamp.as_deref(),
            call.signature.as_deref(),
            &body,
            unix_now(),
        );
        if let Err(refused) = checked {
            log::warn!("invalidate: peer {peer}: refused: {}", refused.message());
            return respond(
                stream,
                refused.status(),
                "application/json",
                &error_json(refused.message()),
            );
        }
    }
    let request = if all {
        Ok(crate::invalidate::InvalidationRequest {
            all: true,
            ..Default::default()
        })
    } else {
        serde_json::from_slice::<crate::invalidate::InvalidationRequest>(&body)
            .map_err(|e| Refusal::Invalid(format!("invalid JSON request: {e}")))
    };
    let result = request.and_then(|req| inv.apply(&req).map(|out| (req, out)));
    let what = if all {
        "{\"all\":true}".to_string()
    } else {
        String::from_utf8_lossy(&body)
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect()
    };
    match result {
        Ok((req, out)) => {
            log::info!(
                "invalidate: peer {peer} {what}: {} object(s) now, {} ban(s), {} refresh(es) queued, {} dropped",
                out.invalidated,
                out.bans,
                out.refresh_queued,
                out.refresh_dropped
            );
            let nodes = match &state.bus {
                Some(bus) => share(bus, &req),
                None => vec![serde_json::json!({ "node": inv.node(), "applied": true })],
            };
            let mut answer = serde_json::json!({
                "invalidated": out.invalidated,
                "bans": out.bans,
                "nodes": nodes,
            });
            if req.mode == crate::invalidate::Mode::Refresh {
                // This node's queue: what it will refetch, what stays stale.
                answer["queued"] = out.refresh_queued.into();
                answer["dropped"] = out.refresh_dropped.into();
            }
            let mut body = answer.to_string();
            body.push('\n');
            respond(stream, 200, "application/json", &body)
        }
        Err(Refusal::Invalid(msg)) => {
            log::warn!("invalidate: peer {peer}: refused: {msg}");
            respond(stream, 400, "application/json", &error_json(&msg))
        }
        Err(Refusal::BansFull) => {
            log::warn!("invalidate: peer {peer}: refused: limits.bans_max reached");
            respond(
                stream,
                503,
                "application/json",
                &error_json("limits.bans_max bans are active; wait for them to retire or use /invalidate/all"),
            )
        }
    }
}

/// Publish an invalidation this node applied to the bus, and, when the
/// request says `"wait": "all"`, wait for every live node's ack. Returns
/// the `nodes` of the answer: this node (applied), then the others.
fn share(
    bus: &crate::bus::Bus,
    req: &crate::invalidate::InvalidationRequest,
) -> Vec<serde_json::Value> {
    use crate::invalidate::{Wait, ACK_WAIT_MS_DEFAULT};
    let me = bus.node().to_string();
    let mut nodes = vec![serde_json::json!({ "node": me, "applied": true })];
    let id = match bus.publish(&req.for_bus()) {
        Ok(id) => id,
        Err(e) => {
            // Applied here; the others get it when Redis is back (outbox),
            // or never when refused: say so in the answer and the log.
            log::warn!("invalidate: bus: {e}");
            nodes[0]["bus"] = serde_json::json!(e.to_string());
            return nodes;
        }
    };
    if req.wait != Wait::All {
        return nodes;
    }
    let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(ACK_WAIT_MS_DEFAULT));
    match bus.wait_acks(id, timeout) {
        Ok(acks) => {
            for (node, applied) in acks {
                if node != me {
                    nodes.push(serde_json::json!({ "node": node, "applied": applied }));
                }
            }
        }
        Err(e) => {
            log::warn!("invalidate: bus: waiting for acks: {e}");
            nodes[0]["bus"] = serde_json::json!(e.to_string());
        }
    }
    nodes
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /bans`: the active bans, oldest first.
fn bans_json(inv: &Invalidator) -> String {
    let bans: Vec<serde_json::Value> = inv
        .bans
        .list(unix_now())
        .iter()
        .map(|b| {
            serde_json::json!({
                "id": b.id,
                "selector": b.selector.to_json(),
                "created": b.created_secs,
                "retires": b.retire_secs,
                // Relaxed: a statistic.
                "invalidated": b.matched.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let mut s = serde_json::json!({ "bans": bans, "bans_max": inv.bans.max() }).to_string();
    s.push('\n');
    s
}

fn refresh_gauges(inv: &Invalidator) -> crate::metrics::RefreshGauges {
    let q = &inv.refresh;
    let counts = q.counts();
    crate::metrics::RefreshGauges {
        results: std::array::from_fn(|i| {
            (crate::invalidate::refresh::REFRESH_RESULTS[i], counts[i])
        }),
        queue_depth: q.depth() as u64,
        in_flight: q.in_flight() as u64,
    }
}

fn invalidation_gauges(inv: &Invalidator) -> InvalidationGauges {
    // Lookups of objects newer than every ban do not retire bans: a scrape does.
    inv.bans.retire(unix_now());
    let p = inv.purges();
    InvalidationGauges {
        purges: std::array::from_fn(|i| (PURGE_KINDS[i], p[i])),
        invalidated: inv.invalidated(),
        bans_active: inv.bans.active() as u64,
        tag_index_bytes: inv.tags.bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_gate_by_kind() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(matches!(authorize(None, None, true), Access::NoToken));
        assert!(matches!(authorize(None, None, false), Access::Granted));
        assert!(matches!(authorize(Some("t"), None, false), Access::Denied));
        assert!(matches!(
            authorize(Some("t"), Some("u"), true),
            Access::Denied
        ));
        assert!(matches!(
            authorize(Some("t"), Some("t"), true),
            Access::Granted
        ));
    }
}
