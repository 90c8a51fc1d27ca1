//! The floor: a bare WebSocket echo round trip on this machine, measured in
//! the same run, so that latencies can be read against what the network
//! stack alone costs.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;

use crate::stats::Summary;

/// Round trips of a small binary frame to an echo server in this process.
pub async fn run(round_trips: usize) -> anyhow::Result<Summary> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        let mut socket = tokio_tungstenite::accept_async(stream).await?;
        while let Some(frame) = socket.next().await {
            let frame = frame?;
            if frame.is_binary() {
                socket.send(frame).await?;
            }
        }
        anyhow::Ok(())
    });
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{address}/")).await?;
    let payload = vec![0x42u8; 64];
    let mut samples = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        client
            .send(tungstenite::Message::binary(payload.clone()))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.next()).await? {
                Some(Ok(tungstenite::Message::Binary(_))) => break,
                Some(Ok(_)) => continue,
                other => anyhow::bail!("echo failed: {other:?}"),
            }
        }
        samples.push(started.elapsed());
    }
    let _ = client.close(None).await;
    server.abort();
    Ok(Summary::of(&mut samples))
}
