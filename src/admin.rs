//! The admin listener: `/healthz`, `/metrics` (Prometheus text), `/stats`
//! (JSON). Control plane only: it runs on its own thread and port and never
//! touches the request path. One request per connection, answered in turn,
//! each bounded by a read/write timeout.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{
    Counter, Histogram, HistogramSnapshot, Metrics, StoreGauges, CACHE_OUTCOMES, STATUS_CLASSES,
};
use crate::store::SharedStore;

/// Bytes of an admin request head we read at most.
pub const ADMIN_HEAD_BYTES_MAX: usize = 8 << 10;
/// Time one admin connection may take to send its request or read the answer.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin thread reads.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<SharedStore>,
    /// Set once every worker accepts; `/healthz` answers 503 before.
    pub ready: Arc<AtomicBool>,
    /// Set when shutdown begins; `/healthz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
}

/// Serve admin requests on `listener` until the process exits.
pub fn spawn(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringcache-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_one(stream, &state) {
                            log::debug!("admin: {e}");
                        }
                    }
                    Err(e) => log::warn!("admin: accept: {e}"),
                }
            }
        })
        .map(drop)
}

fn serve_one(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut buf = vec![0u8; ADMIN_HEAD_BYTES_MAX];
    let mut len = 0;
    let path = loop {
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
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") && req.method != Some("HEAD") {
                    return respond(&mut stream, 405, "text/plain", "method not allowed\n");
                }
                break req.path.unwrap_or("/").to_string();
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return respond(&mut stream, 400, "text/plain", "bad request\n"),
        }
    };
    let path = path.split('?').next().unwrap_or("/");
    match path {
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
            let body = state.metrics.render(&gauges(&state.store));
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body)
        }
        "/stats" => {
            let g = gauges(&state.store);
            let m = &state.metrics;
            let body = format!(
                "{{\"requests\":{},\"hits\":{},\"misses\":{},\"passes\":{},\"origin_fetches\":{},\"stored\":{},\"store\":{{\"bytes_used\":{},\"bytes_max\":{},\"items\":{},\"evictions\":{}}},{}}}\n",
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
                traffic_json(m)
            );
            respond(&mut stream, 200, "application/json", &body)
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n"),
    }
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
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
