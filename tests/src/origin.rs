//! A scriptable origin for upstream and gateway tests: an axum server on
//! loopback whose answer for each path is set by the test (status, headers,
//! body, or a function of the request's headers), which answers conditional
//! requests with `304` against the reply's own `ETag` / `Last-Modified` as a
//! careful origin does, and which logs every request it gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

/// One answer of the origin.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its status.
    pub status: u16,
    /// Its headers, in order (repeats allowed).
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A `200` with `body` and `headers`.
    pub fn ok(headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    /// This reply with another status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Script = Arc<dyn Fn(&Method, &HeaderMap) -> Reply + Send + Sync>;

/// A request the origin got.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// The status the origin answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, Script>,
    seen: Vec<Seen>,
}

/// The running origin.
#[derive(Clone)]
pub struct Origin {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Origin {
    /// Starts an origin that answers `404` until told otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = inner.clone();
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
                let state = state.clone();
                async move { answer(&state, method, uri, headers) }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url: format!("http://{addr}"),
            inner,
        })
    }

    /// Always answers `path` (path and query) with `reply`.
    pub fn set(&self, path: &str, reply: Reply) {
        self.set_fn(path, move |_, _| reply.clone());
    }

    /// Answers `path` with what `f` makes of the request.
    pub fn set_fn(
        &self,
        path: &str,
        f: impl Fn(&Method, &HeaderMap) -> Reply + Send + Sync + 'static,
    ) {
        self.lock().scripts.insert(path.to_string(), Arc::new(f));
    }

    /// Every request for `path` so far.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    /// How many requests for `path` it got.
    pub fn hits(&self, path: &str) -> usize {
        self.seen(path).len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn answer(inner: &Mutex<Inner>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let script = inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .scripts
        .get(&path)
        .cloned();
    let reply = match script {
        Some(f) => f(&method, &headers),
        None => Reply::ok(&[], "no such path").status(404),
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let conditional = (method == Method::GET || method == Method::HEAD)
        && reply.status == 200
        && peercache_core::conditional::not_modified(
            peercache_core::conditional::Conditions {
                if_none_match: text("if-none-match"),
                if_modified_since: text("if-modified-since"),
            },
            peercache_core::conditional::Validators {
                etag: reply.header("etag"),
                last_modified: reply.header("last-modified"),
            },
        );
    let status = if conditional { 304 } else { reply.status };
    inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .seen
        .push(Seen {
            method,
            path,
            headers,
            status,
        });
    let mut resp = Response::new(if conditional {
        Body::empty()
    } else {
        Body::from(reply.body.clone())
    });
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (k, v) in &reply.headers {
        if conditional && k.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}
