//! The listening socket every HTTP/WebSocket tier accepts on.
//!
//! `tokio::net::TcpListener::bind` asks the kernel for an accept queue of 128 connections. A burst
//! of clients connecting at once (10,000 sockets re-connecting after a deploy, a load balancer
//! opening its pool) overflows that while the accept loop is busy, and every dropped SYN costs
//! its client a 1 s retransmission: the benchmarks saw connection p99 at ~1 s for that reason
//! alone. The kernel caps the queue at `net.core.somaxconn` (4096 on current kernels).

use std::net::SocketAddr;

/// Accept-queue length asked of the kernel (it applies `min(this, somaxconn)`).
pub const BACKLOG: u32 = 4096;

/// Binds `addr` with [`BACKLOG`] and address reuse (a restart does not wait out TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_on_the_bound_address() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert_eq!(
            client.unwrap().peer_addr().unwrap(),
            addr,
            "the client reached the listener"
        );
        assert!(accepted.is_ok());
    }
}
