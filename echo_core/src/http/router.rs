//! Routing: a route's handler for the request's path, or 404 and 405 the same way in both
//! services.

use super::{Request, Response};

/// A route's handler: a plain function of the service state and the request.
pub type Handler<S> = fn(&S, &Request) -> Response;

/// Finds the route for the request's path: 404 when no route has it, 405 with `Allow` when
/// the method is neither GET nor HEAD (HEAD runs the GET handler; the server drops the body).
pub fn route<S>(state: &S, req: &Request, routes: &[(&'static str, Handler<S>)]) -> Response {
    let Some(&(path, handler)) = routes.iter().find(|(path, _)| *path == req.path) else {
        return Response::error(404, "Not found");
    };
    let response = if req.method != "GET" && req.method != "HEAD" {
        Response::error(405, "Method not allowed").with_header("Allow", "GET, HEAD")
    } else {
        handler(state, req)
    };
    Response {
        route: Some(path),
        ..response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(_: &(), _: &Request) -> Response {
        Response::json(200, &json!({"ok": true}))
    }

    #[test]
    fn route_answers_404_405_and_runs_get_and_head() {
        let routes: &[(&'static str, Handler<()>)] = &[("/x", ok)];
        let missing = route(&(), &Request::get("/nope"), routes);
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json_body(), json!({"error": "Not found"}));

        let post = route(&(), &Request::new("POST", "/x", "id"), routes);
        assert_eq!(post.status, 405);
        assert_eq!(post.json_body(), json!({"error": "Method not allowed"}));
        assert_eq!(post.headers, vec![("Allow", "GET, HEAD".to_string())]);
        assert_eq!((missing.route, post.route), (None, Some("/x")));

        assert_eq!(route(&(), &Request::get("/x?a=b"), routes).status, 200);
        assert_eq!(
            route(&(), &Request::new("HEAD", "/x", "id"), routes).status,
            200
        );
    }
}
