//! Serving HTTP on accepted connections, with time limits on slow clients: the first bytes of a
//! connection decide HTTP/1.1 or HTTP/2 within the header timeout; HTTP/1.1 must then deliver
//! each request's headers within it (hyper's `header_read_timeout`, which also ends a keep-alive
//! connection idle that long); bodies have their own timeout in [`crate::arm::read_body`], and
//! what a handler leaves unread is drained before the answer ([`crate::drain`]).
//! Shutdown is graceful: accepting stops, in-flight requests finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::drain;
use crate::tls::{Conn, PeerAddr, ServerListener};

/// What an HTTP/2 connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// A connection whose first bytes were read to tell the protocol, and are replayed.
struct Replay {
    head: Vec<u8>,
    pos: usize,
    inner: Box<dyn Conn>,
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    crate::tls::write_to_inner!();
}

/// The protocol of `head`, or `None` while it could still be either.
fn protocol_of(head: &[u8]) -> Option<Protocol> {
    let n = head.len().min(H2_PREFACE.len());
    if head[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Reads until the protocol is known.
async fn sniff(mut io: Box<dyn Conn>) -> io::Result<(Protocol, Replay)> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(p) = protocol_of(&head) {
            return Ok((p, Replay { head, pos: 0, inner: io }));
        }
    }
}

/// Serves `router` on the connections of `listener` until `shutdown` completes, then lets the
/// open connections finish their requests.
/// How long a client may take to send a request's headers, and its body.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
}

pub async fn serve(
    mut listener: ServerListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            next = listener.accept() => match next {
                Some((io, peer)) => {
                    tokio::spawn(serve_connection(io, peer, router.clone(), timeouts, graceful.watcher()));
                }
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection(io: Box<dyn Conn>, peer: PeerAddr, router: Router, timeouts: Timeouts, watcher: Watcher) {
    let header_timeout = timeouts.header;
    let (protocol, io) = match tokio::time::timeout(header_timeout, sniff(io)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return tracing::debug!(peer = %peer.0, error = %e, "connection closed before a request"),
        Err(_) => return tracing::debug!(peer = %peer.0, "no request within the header timeout; closed"),
    };
    let io = TokioIo::new(io);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let version = req.version();
        let (req, leftover) = {
            let (parts, body) = req.into_parts();
            let (tracked, leftover) = drain::track(body);
            (hyper::Request::from_parts(parts, Body::new(tracked)), leftover)
        };
        let router = router.clone();
        async move {
            let mut answer = tower::ServiceExt::oneshot(router, req).await?;
            leftover.drain(version, timeouts.body, &mut answer).await;
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let served = match protocol {
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            watcher.watch(builder.serve_connection(io, service)).await
        }
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new()).max_concurrent_streams(H2_MAX_STREAMS);
            watcher.watch(builder.serve_connection(io, service)).await
        }
    };
    if let Err(e) = served {
        tracing::debug!(peer = %peer.0, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_the_protocol() {
        assert_eq!(protocol_of(b"G"), Some(Protocol::Http1));
        assert_eq!(protocol_of(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(protocol_of(b"P"), None);
        assert_eq!(protocol_of(b"PRI * HTTP/2.0"), None);
        assert_eq!(protocol_of(b"POST / HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(protocol_of(H2_PREFACE), Some(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(protocol_of(&more), Some(Protocol::Http2));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed() {
        let (client, server) = tokio::io::duplex(64);
        let (mut cr, mut cw) = tokio::io::split(client);
        let sniffing = tokio::spawn(sniff(Box::new(server)));
        use tokio::io::AsyncWriteExt;
        cw.write_all(b"GE").await.expect("write");
        let (p, mut replay) = sniffing.await.expect("join").expect("sniffed");
        assert_eq!(p, Protocol::Http1);
        cw.write_all(b"T / HTTP/1.1\r\n").await.expect("write");
        let mut got = vec![0u8; 16];
        replay.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        replay.write_all(b"ok").await.expect("write back");
        let mut back = [0u8; 2];
        cr.read_exact(&mut back).await.expect("read back");
        assert_eq!(&back, b"ok");
    }
}
