//! Webhook receivers on loopback for the delivery tests (the server must be started with
//! [`LOOPBACK_RECEIVERS`] to send to them).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use hmac::Mac;
use reqwest::Method;
use serde_json::Value;

use crate::{as_user, Answer, TestServer};

/// The flags that let the server deliver to plain-http receivers on loopback.
pub const LOOPBACK_RECEIVERS: [&str; 3] = ["--webhook-allow-http", "--webhook-allow-range", "127.0.0.0/8"];

/// One POST a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// `X-Jitgate-Event`.
    pub event: String,
    /// `X-Jitgate-Delivery`: the delivery's id, the same on every attempt.
    pub delivery: String,
    /// Whether `X-Jitgate-Signature` is the HMAC-SHA256 of `timestamp.body` under the secret.
    pub valid: bool,
    /// `X-Jitgate-Timestamp` (0 when missing).
    pub timestamp: i64,
    /// The JSON body (`Null` when it is not JSON).
    pub body: Value,
}

/// What a receiver got so far, in order of arrival.
pub type Seen = Arc<Mutex<Vec<Received>>>;

/// A receiver that answers every POST with 204; returns its URL and what it gets.
pub fn receiver(secret: &'static str) -> (String, Seen) {
    receiver_answering(secret, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".into())
}

/// A receiver that records each POST and answers with `answer` (a whole HTTP head).
pub fn receiver_answering(secret: &'static str, answer: String) -> (String, Seen) {
    serve_receiver(secret, move |_| Some(answer.clone()))
}

/// A receiver that records each POST, holds the first one's connection open without ever
/// answering (a delivery in flight for as long as the test likes) and answers the others 204.
pub fn receiver_stalling_first(secret: &'static str) -> (String, Seen) {
    let ok = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned();
    serve_receiver(secret, move |n| (n > 0).then(|| ok.clone()))
}

/// Accepts POSTs on loopback, records each, and writes `answer(n)` for the `n`-th (from 0);
/// `None` keeps that connection open, unanswered, for the receiver's life.
fn serve_receiver(secret: &'static str, answer: impl Fn(usize) -> Option<String> + Send + 'static) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen: Seen = Default::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, stream) in listener.incoming().flatten().enumerate() {
            let mut reader = BufReader::new(stream);
            let received = read_post(&mut reader, secret);
            if let Ok(mut v) = out.lock() {
                v.push(received);
            }
            match answer(n) {
                Some(a) => {
                    let _ = reader.get_mut().write_all(a.as_bytes());
                }
                None => held.push(reader),
            }
        }
    });
    (url, seen)
}

/// Reads one POST and checks its signature under `secret`.
fn read_post(reader: &mut BufReader<std::net::TcpStream>, secret: &str) -> Received {
    let mut headers = HashMap::new();
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len.min(1 << 20)];
    let _ = reader.read_exact(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    let ts = headers.get("x-jitgate-timestamp").cloned().unwrap_or_default();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{ts}.{body}").as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    Received {
        event: headers.get("x-jitgate-event").cloned().unwrap_or_default(),
        delivery: headers.get("x-jitgate-delivery").cloned().unwrap_or_default(),
        valid: headers.get("x-jitgate-signature") == Some(&expected),
        timestamp: ts.parse().unwrap_or(0),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    }
}

/// A receiver that accepts connections and never answers.
pub fn hanging_receiver() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

/// A loopback URL where nothing listens.
pub fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    drop(listener);
    url
}

/// The events a receiver got, in order of arrival.
pub fn events(seen: &Seen) -> Vec<String> {
    seen.lock().map(|v| v.iter().map(|e| e.event.clone()).collect()).unwrap_or_default()
}

/// `POST /api/v1/webhooks` with `body`, as the holder of `token`.
pub async fn create_webhook(s: &TestServer, token: &str, body: Value) -> Answer {
    as_user(s, token, Method::POST, &s.url("/api/v1/webhooks"), Some(&body)).await
}
