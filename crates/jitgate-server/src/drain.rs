//! Reading what is left of a request body before answering, so a client still sending gets the
//! answer instead of a reset.
//!
//! A handler may answer before it has read the whole body: a body over `--max-body-bytes` (413),
//! a caller without a token (401). Closing a connection whose receive buffer still holds unread
//! data makes the kernel send a TCP reset, and a client still writing its body then sees
//! "connection reset" instead of the answer (over TLS as much as over plain HTTP). So the body
//! reaches the handler through [`Tracked`], which leaves the connection's body where
//! [`Leftover::drain`] can read and discard the rest once the handler has answered — at most
//! [`DRAIN_BYTES`] and within the body timeout. A body that is still longer (or slower) is not
//! waited for: the HTTP/1.1 answer says `Connection: close`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Response, Version};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The most of an unread body read and discarded to answer cleanly (the largest
/// `--max-body-bytes`).
pub const DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// A request body shared between the handler (which reads it through [`Tracked`]) and the
/// connection (which drains what is left through [`Leftover`]).
type Shared = Arc<Mutex<Option<Incoming>>>;

/// The handler's side of a request body.
pub struct Tracked(Shared);

/// The connection's side: what the handler left unread.
pub struct Leftover(Shared);

/// Splits a request body into the handler's and the connection's sides.
pub fn track(body: Incoming) -> (Tracked, Leftover) {
    let shared = Arc::new(Mutex::new(Some(body)));
    (Tracked(shared.clone()), Leftover(shared))
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Ok(mut guard) = self.0.lock() else { return Poll::Ready(None) };
        match guard.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().map(|g| g.as_ref().is_none_or(Body::is_end_stream)).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().ok().and_then(|g| g.as_ref().map(Body::size_hint)).unwrap_or_default()
    }
}

impl Leftover {
    /// Reads and discards the rest of the body (at most [`DRAIN_BYTES`], within `timeout`); when
    /// some of it stays unread, an HTTP/1.1 `answer` closes the connection after it.
    pub async fn drain<B>(self, version: Version, timeout: Duration, answer: &mut Response<B>) {
        let body = self.0.lock().ok().and_then(|mut g| g.take());
        let Some(mut body) = body else { return };
        if body.is_end_stream() {
            return;
        }
        let whole = body.size_hint().exact().is_none_or(|n| n <= DRAIN_BYTES);
        let drained = whole && tokio::time::timeout(timeout, read_to_end(&mut body)).await.unwrap_or(false);
        if !drained && version <= Version::HTTP_11 {
            answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// Reads frames until the body ends (`true`) or [`DRAIN_BYTES`] were read or it failed (`false`).
async fn read_to_end(body: &mut Incoming) -> bool {
    let mut read: u64 = 0;
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return true,
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > DRAIN_BYTES {
                    return false;
                }
            }
            Some(Err(_)) => return false,
        }
    }
}
