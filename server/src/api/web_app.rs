//! `/`: the web app, from files embedded at compile time (see
//! `server/build.rs`), on the same origin as the API and the sync socket.
//!
//! Files under `/assets/` carry a content hash in their names, so they are
//! cached for a year and never revalidated; everything else (`index.html`,
//! the service worker, the manifest, icons) is revalidated on every use
//! through its entity tag, so a new server version reaches browsers at the
//! next load. Every response carries a strict Content-Security-Policy: no
//! inline script, scripts only from this origin, WebAssembly allowed
//! (Automerge runs as WASM), no framing.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    /// The URL path, starting with `/`.
    pub(crate) path: &'static str,
    /// The bytes as built.
    pub(crate) body: &'static [u8],
    /// The same bytes compressed with Brotli at build time, if worth it.
    pub(crate) brotli: Option<&'static [u8]>,
    /// The same bytes compressed with gzip at build time, if worth it.
    pub(crate) gzip: Option<&'static [u8]>,
    /// A quoted entity tag derived from `body`.
    pub(crate) etag: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The policy of every app response. `connect-src 'self'` covers the
/// same-origin WebSocket (CSP level 3 matches `ws:` and `wss:` for `'self'`).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; worker-src 'self'; \
     manifest-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

pub fn configure(cfg: &mut web::ServiceConfig) {
    for asset in ASSETS {
        let paths: &[&str] = if asset.path == "/index.html" {
            &["/", "/index.html"]
        } else {
            std::slice::from_ref(&asset.path)
        };
        for path in paths {
            cfg.service(
                web::resource(*path)
                    .route(web::get().to(move |req: HttpRequest| serve(asset, req)))
                    .route(web::head().to(move |req: HttpRequest| serve(asset, req)))
                    .default_service(super::problem::method_not_allowed("GET")),
            );
        }
    }
}

/// The encodings a request accepts, from `Accept-Encoding`; `q=0` refuses one.
fn accepts(req: &HttpRequest, coding: &str) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().map_or(true, |q| q <= 0.0))
            });
            name.eq_ignore_ascii_case(coding) && !refused
        })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn security_headers(response: &mut HttpResponse) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

async fn serve(asset: &'static Asset, req: HttpRequest) -> HttpResponse {
    let cache = if asset.path.starts_with("/assets/") {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let not_modified = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == asset.etag
        });
    let mut response = if not_modified {
        HttpResponse::NotModified().finish()
    } else {
        let (body, encoding) = match (asset.brotli, asset.gzip) {
            (Some(br), _) if accepts(&req, "br") => (br, Some("br")),
            (_, Some(gz)) if accepts(&req, "gzip") => (gz, Some("gzip")),
            _ => (asset.body, None),
        };
        let mut response = HttpResponse::Ok()
            .content_type(content_type(asset.path))
            .body(body);
        if let Some(encoding) = encoding {
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    security_headers(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_embedded_the_app_with_hashed_assets() {
        assert!(ASSETS.iter().any(|a| a.path == "/index.html"));
        assert!(ASSETS.iter().any(|a| a.path == "/sw.js"));
        assert!(
            ASSETS
                .iter()
                .any(|a| a.path.starts_with("/assets/") && a.path.ends_with(".wasm"))
        );
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::ACCEPT_ENCODING, "gzip, deflate, br;q=0"))
            .to_http_request();
        assert!(accepts(&req, "gzip"));
        assert!(!accepts(&req, "br"));
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::ACCEPT_ENCODING, "BR;q=0.5"))
            .to_http_request();
        assert!(accepts(&req, "br"));
    }
}
