//! The panel's pages, styles and script, embedded in the binary with
//! rust-embed (from `provisioner/ui/`; tests build with `debug-embed`, so
//! they serve the embedded copies as a release build does), and the
//! security headers every answer carries.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::RustEmbed)]
#[folder = "ui/"]
struct Assets;

/// Every file the panel's first load fetches (the size budget covers them).
pub const FIRST_LOAD: [&str; 3] = ["index.html", "app.css", "app.js"];

/// The bytes of an embedded file.
pub fn file(name: &str) -> Option<std::borrow::Cow<'static, [u8]>> {
    Assets::get(name).map(|f| f.data)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// `/` is the page; the router inside it is the URL's fragment
/// (`/#/fleet`), so no other path is a page.
pub async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let name = if path.is_empty() { "index.html" } else { path };
    if name.starts_with("ui/api") {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no such API"})),
        )
            .into_response();
    }
    match Assets::get(name) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from(f.data.into_owned()),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The answer may not be framed, sniffed or cached (the API), and scripts
/// come from the panel itself only.
///
/// HTTP/2 requests carry the host in `:authority`, not `Host`: it is copied
/// into `Host` here, so the Origin check compares both versions alike.
pub async fn security_headers(mut req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/ui/api/");
    if !req.headers().contains_key(header::HOST) {
        let authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(a) = authority {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(h, "strict-transport-security", "max-age=31536000");
    if api {
        set(h, "cache-control", "no-store");
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_load_is_embedded_and_under_200_kb() {
        let total: usize = FIRST_LOAD
            .iter()
            .map(|n| file(n).unwrap_or_else(|| panic!("{n} embedded")).len())
            .sum();
        assert!(total < 200 * 1024, "first load {total} bytes");
    }
}
