//! Limits on the site listener, so connections cannot be held: a cap on
//! connections in total and per client address ([`ConnLimits`], applied by the
//! [`Guard`] acceptor before any byte is read), and a write timeout
//! ([`Guarded`]): a connection whose reader stops reading for longer than
//! `--write-timeout` is cut, which drops its response body and releases what
//! the transfer still owed the egress model. Header-read and idle timeouts
//! are hyper's (`header_read_timeout`, set in [`crate::run`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Connections held, in total and per client address.
#[derive(Debug)]
pub struct ConnLimits {
    max: usize,
    per_ip: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnLimits {
    /// At most `max` connections, `per_ip` from one address.
    pub fn new(max: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_ip,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = held.1.get(&ip).copied().unwrap_or(0);
        if held.0 >= self.max || from_ip >= self.per_ip {
            return None;
        }
        held.0 += 1;
        held.1.insert(ip, from_ip + 1);
        Some(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// One connection's place; freed on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limits.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(1);
        if let Some(n) = held.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.1.remove(&self.ip);
            }
        }
    }
}

/// The acceptor that enforces [`ConnLimits`] and wraps the stream in
/// [`Guarded`] (with `TCP_NODELAY`: small responses must not wait).
#[derive(Debug, Clone)]
pub struct Guard {
    limits: Arc<ConnLimits>,
    write_timeout: Duration,
}

impl Guard {
    /// An acceptor over `limits`, cutting readers stalled past `write_timeout`.
    pub fn new(limits: Arc<ConnLimits>, write_timeout: Duration) -> Self {
        Self {
            limits,
            write_timeout,
        }
    }
}

impl<S> axum_server::accept::Accept<TcpStream, S> for Guard {
    type Stream = Guarded<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = stream
            .peer_addr()
            .ok()
            .and_then(|addr| self.limits.take(addr.ip()));
        let Some(slot) = slot else {
            metrics::counter!("peercache_connections_refused_total").increment(1);
            return std::future::ready(Err(io::Error::other("connection cap reached")));
        };
        let _ = stream.set_nodelay(true);
        std::future::ready(Ok((
            Guarded {
                io: stream,
                _slot: slot,
                write_timeout: self.write_timeout,
                stalled: None,
            },
            service,
        )))
    }
}

/// A connection that fails its writes once they have waited longer than the
/// write timeout for the reader.
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    _slot: Slot,
    write_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Guarded<T> {
    /// `Pending` from the inner writer: arms (or checks) the stall clock.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.write_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the reader stopped reading",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn on_write<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.stall(cx) {
                Poll::Ready(e) => {
                    metrics::counter!("peercache_write_timeouts_total").increment(1);
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.on_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.on_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_total_and_per_address() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let s1 = limits.take(a);
        let s2 = limits.take(a);
        assert!(s1.is_some() && s2.is_some());
        assert!(limits.take(a).is_none(), "per-address cap");
        let s3 = limits.take(b);
        assert!(s3.is_some());
        assert!(limits.take(b).is_none(), "total cap");
        drop(s1);
        assert!(limits.take(a).is_some(), "a freed slot is reusable");
    }
}
