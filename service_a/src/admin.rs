//! A's admin listener (`--admin-listen`, off by default): `GET /faults` shows the faults in
//! force and `PUT /faults` changes them for the requests that follow, as toxiproxy's and
//! Envoy's runtime APIs do. It is a second server on its own listener, never the public
//! port: whoever reaches it can slow or fail A, so every example binds it to loopback.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;

use echo_core::{Metrics, Request, Response, ServerHandle};
use serde_json::json;

use crate::faults::{parse_change, Faults, LiveFaults};

/// The admin listener's handler.
#[derive(Debug)]
pub struct Admin {
    faults: Arc<LiveFaults>,
}

/// Connections the admin listener holds at most: it serves a person or a script.
const ADMIN_MAX_CONNECTIONS: usize = 16;

impl Admin {
    /// The admin of the faults `faults` (the service's, from [`crate::ServiceA::faults`]).
    pub fn new(faults: Arc<LiveFaults>) -> Admin {
        Admin { faults }
    }

    /// Answers one request: `/faults` by GET, HEAD or PUT; 405 for another method, 404 for
    /// another path.
    pub fn handle(&self, req: &Request) -> Response {
        if req.path != "/faults" {
            return Response::error(404, "Not found");
        }
        let response = match req.method.as_str() {
            "GET" | "HEAD" => faults_json(200, &self.faults.get()),
            "PUT" => self.put(req),
            _ => Response::error(405, "Method not allowed").with_header("Allow", "GET, HEAD, PUT"),
        };
        Response {
            route: Some("/faults"),
            ..response
        }
    }

    /// Sets the fields the body names, all or none; logs the change with its old and new
    /// values, or why it was refused.
    fn put(&self, req: &Request) -> Response {
        let change = match parse_change(req.content_type.as_deref(), &req.body) {
            Ok(change) => change,
            Err(e) => {
                log::info!(target: "service_a", "PUT /faults refused, nothing changed: {e} request_id={}", req.request_id);
                return Response::error(e.status(), &e.to_string());
            }
        };
        let (old, new) = self.faults.update(&change);
        log::warn!(target: "service_a",
            "faults changed by PUT /faults: delay_ms {} -> {}, fail_rate {} -> {}, fail_status {} -> {} request_id={}",
            old.delay_ms, new.delay_ms, old.fail_rate, new.fail_rate, old.fail_status, new.fail_status, req.request_id);
        faults_json(200, &new)
    }
}

fn faults_json(status: u16, faults: &Faults) -> Response {
    Response::json(status, &json!(faults))
}

/// Serves the admin handler on `listener` (bound by the caller, before the config line).
pub(crate) fn serve(listener: TcpListener, faults: Arc<LiveFaults>) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        log::warn!(target: "service_a", "the admin listener {addr} is not on loopback: whoever reaches it can slow or fail this service");
    }
    let admin = Admin::new(faults);
    let options = echo_core::server::Options {
        max_connections: ADMIN_MAX_CONNECTIONS,
        workers: 1,
        max_blocked: 0,
    };
    let server = echo_core::serve(
        "service_a",
        listener,
        options,
        Arc::new(Metrics::new()),
        move |req| admin.handle(req),
    )?;
    log::info!(target: "service_a", "admin: GET and PUT http://{addr}/faults");
    Ok(server)
}
