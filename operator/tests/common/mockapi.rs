//! A fake Kubernetes API server on kube's mock service (tower-test): every request is recorded
//! and answered by a handler, which may wait before answering (a watch that stays open).
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        self.query.contains("watch=true")
    }
}

/// An answer.
pub enum Reply {
    /// A status code and a JSON body.
    Json(u16, Value),
    /// A watch response: these events, one JSON line each, then the stream ends.
    Events(Vec<Value>),
    /// Never answer (an idle watch).
    Hang,
}

pub type Handler =
    Arc<dyn Fn(Recorded) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// The fake API: the client to give to the code under test and the requests seen.
pub struct MockApi {
    pub client: Client,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockApi {
    /// A fake API server answering with `handler` (async).
    pub fn new<F, Fut>(handler: F) -> MockApi
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut hanging = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let rec = Recorded {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or("").to_string(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                seen.lock().unwrap().push(rec.clone());
                let h = handler.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                hanging.push(rx);
                tokio::spawn(async move {
                    match h(rec).await {
                        Reply::Json(code, v) => send.send_response(
                            Response::builder()
                                .status(code)
                                .header("content-type", "application/json")
                                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                                .unwrap(),
                        ),
                        Reply::Events(events) => {
                            let mut text = Vec::new();
                            for e in events {
                                text.extend(serde_json::to_vec(&e).unwrap());
                                text.push(b'\n');
                            }
                            send.send_response(Response::new(Body::from(text)))
                        }
                        Reply::Hang => {
                            // Keep the responder alive so the request stays open.
                            let _ = tx.send(send);
                        }
                    }
                });
            }
            drop(hanging);
        });
        MockApi {
            client: Client::new(service, "default"),
            requests,
            task,
        }
    }

    /// The requests so far, except watches and lists (the writes and point reads).
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests with this method.
    pub fn with_method(&self, method: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method)
            .collect()
    }
}

/// A Kubernetes `Status` error body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

pub fn not_found(what: &str) -> Reply {
    Reply::Json(404, status(404, "NotFound", &format!("{what} not found")))
}

/// Polls `cond` every 50 ms for up to `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
