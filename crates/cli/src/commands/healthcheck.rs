//! `healthcheck`: a container HEALTHCHECK that needs no curl in the image.

use crate::args::HealthcheckArgs;
use anyhow::Context;

/// `GET path` on 127.0.0.1:port over plain HTTP/1.0: Ok when the status is 200.
pub fn healthcheck(h: &HealthcheckArgs) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_millis(h.timeout_ms.max(1));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], h.port));
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(conn, "GET {} HTTP/1.0\r\nHost: localhost\r\n\r\n", h.path)?;
    let mut head = [0u8; 64];
    let n = conn.read(&mut head)?;
    let status = String::from_utf8_lossy(&head[..n]);
    let line = status.lines().next().unwrap_or("");
    anyhow::ensure!(
        line.split_whitespace().nth(1) == Some("200"),
        "{addr}{} answered {line:?}",
        h.path
    );
    Ok(())
}
