//! The public listener: at most `STOA_MAX_CONNECTIONS` client connections open at once.
//!
//! Each open connection holds memory whether or not it is sending anything (hyper's read
//! and write buffers and the connection's task: 17–31 KiB each under load here), so
//! their number, not the request rate, is what would take a replica past its container's
//! memory limit; the default limit follows that limit (`config::container`). At the limit the listener stops accepting: new connections wait in the
//! kernel's accept queue (`STOA_LISTEN_BACKLOG`) until one closes, and the clients see a
//! slow connect instead of an out-of-memory kill of every connection at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Connections {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    open: Gauge,
}

impl Connections {
    /// `open` reports the connections open now.
    pub fn new(listener: TcpListener, max: usize, open: Gauge) -> Self {
        Connections {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            open,
        }
    }
}

/// An accepted connection, holding its slot until it is dropped.
pub struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The client's address, as `ConnectInfo`.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, Connections>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Connections>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Listener for Connections {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        // The semaphore is never closed, so this waits until a slot is free.
        let slot = loop {
            if let Ok(slot) = self.slots.clone().acquire_owned().await {
                break slot;
            }
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    // Answers are written whole; waiting for more to coalesce only adds
                    // latency (Nagle's algorithm against the client's delayed ACK).
                    let _ = stream.set_nodelay(true);
                    self.open.inc();
                    let connection = Connection {
                        stream,
                        _slot: slot,
                        open: self.open.clone(),
                    };
                    return (connection, peer);
                }
                Err(e) => accept_failed(&e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// As axum's own listener does: errors about one connection are skipped; running out of
/// file descriptors or memory is waited out (accepting again at once would spin).
async fn accept_failed(e: &io::Error) {
    let per_connection = matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    );
    if !per_connection {
        tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
