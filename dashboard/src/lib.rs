//! The web dashboard: one HTML page, a stylesheet and a script, compiled into the controller
//! binary and served at `/`. The page talks to the same REST API as the CLI (`/api`), logs in
//! with a password (session cookie + CSRF token), lists tasks and applies the deltas that arrive
//! over SSE (`/api/events`) instead of reloading the table, and shows each control only to roles
//! that may use it. The task panel renders the agent's stream-json log as a transcript; the agent
//! view reads `/api/activity`; the charts are inline SVG drawn from `/api/stats`. Every text from
//! the API is inserted as text, never as markup, under a CSP that allows no inline script. There
//! is no build step: what is in `assets/` is what the browser gets.
#![deny(missing_docs)]

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The page.
pub const INDEX_HTML: &str = include_str!("assets/index.html");
/// The script.
pub const APP_JS: &str = include_str!("assets/app.js");
/// The stylesheet.
pub const STYLE_CSS: &str = include_str!("assets/style.css");

fn asset(body: &'static str, kind: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// Routes for `/`, `/app.js` and `/style.css`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                        (
                            header::CONTENT_SECURITY_POLICY,
                            "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                        ),
                        (header::X_FRAME_OPTIONS, "DENY"),
                    ],
                    INDEX_HTML,
                )
            }),
        )
        .route("/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/style.css", get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }))
}

#[cfg(test)]
mod tests {
    /// A form submitted before the script has loaded (a slow link, a password manager that
    /// submits at once) goes where the browser sends it by default: a GET, with the fields in the
    /// URL — the password in history and access logs. Every form says POST.
    #[test]
    fn no_form_submits_its_fields_in_a_url() {
        let forms: Vec<&str> = super::INDEX_HTML.split("<form").skip(1).collect();
        assert!(forms.len() >= 2, "the page has its forms");
        for form in forms {
            let tag = &form[..form.find('>').expect("a form tag ends")];
            assert!(
                tag.contains("method=\"post\""),
                "a form submits by GET: <form{tag}>"
            );
        }
    }
}
