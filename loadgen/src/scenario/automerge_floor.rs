//! The protocol floor: the Automerge work that fan-out needs, with no
//! network, no storage and no server process. Device A makes a change and
//! generates a sync message; the server's replica receives it and answers A,
//! then generates a message for each other device, which receives it and
//! acknowledges. Two figures come out:
//!
//! - the latency of one edit reaching every other device through a relay,
//!   counting every replica's work (the floor under fan-out latency);
//! - the server replica's share of that work alone, per edit: no server
//!   that relays Automerge sync messages can deliver edits faster than one
//!   core allows for this share (the floor under saturation).

use std::time::{Duration, Instant};

use automerge::AutoCommit;
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;

use crate::stats::Summary;

/// What the floor measured.
#[derive(Debug)]
pub struct Floor {
    /// Edit made on A until every other device has applied it.
    pub latency: Summary,
    /// The server replica's CPU time per edit, averaged.
    pub server_per_edit: Duration,
    /// Every replica's CPU time per edit (the edit, every message and
    /// acknowledgement until all links are settled), averaged: what a
    /// machine running both the devices and the server spends.
    pub all_per_edit: Duration,
    /// Deliveries (edit × receiving device) one core can relay at most.
    pub deliveries_per_core_second: f64,
}

fn exchange(a: &mut AutoCommit, sa: &mut sync::State, b: &mut AutoCommit, sb: &mut sync::State) {
    for _ in 0..10 {
        let m1 = a.sync().generate_sync_message(sa);
        if let Some(m) = &m1 {
            b.sync().receive_sync_message(sb, m.clone()).expect("valid");
        }
        let m2 = b.sync().generate_sync_message(sb);
        if let Some(m) = &m2 {
            a.sync().receive_sync_message(sa, m.clone()).expect("valid");
        }
        if m1.is_none() && m2.is_none() {
            break;
        }
    }
}

/// Measures `edits` edits made on device 0 and relayed through the server's
/// replica to `devices - 1` other devices.
pub fn run(edits: usize, devices: usize) -> anyhow::Result<Floor> {
    anyhow::ensure!(devices >= 2, "the floor needs at least two devices");
    let mut origin = AutoCommit::new();
    origin.put(automerge::ROOT, "title", "fan-out")?;
    let mut server = origin.fork();
    // Device replicas and their sync states, and the server's state for each.
    let mut replicas: Vec<(AutoCommit, sync::State)> = (0..devices)
        .map(|_| (origin.fork(), sync::State::new()))
        .collect();
    let mut server_states: Vec<sync::State> = (0..devices).map(|_| sync::State::new()).collect();
    // Settle the sync states first, as after a connection's first exchange.
    for ((doc, state), server_state) in replicas.iter_mut().zip(&mut server_states) {
        exchange(doc, state, &mut server, server_state);
    }
    let mut samples = Vec::with_capacity(edits);
    let mut server_time = Duration::ZERO;
    let all_started = Instant::now();
    for n in 0..edits {
        let started = Instant::now();
        let (a, a_state) = &mut replicas[0];
        a.put(automerge::ROOT, "d0", n as i64)?;
        let m = a
            .sync()
            .generate_sync_message(a_state)
            .expect("a change to send");
        // A → server, and the server's acknowledgement back to A.
        let timer = Instant::now();
        server
            .sync()
            .receive_sync_message(&mut server_states[0], m)?;
        let ack = server.sync().generate_sync_message(&mut server_states[0]);
        server_time += timer.elapsed();
        if let Some(ack) = ack {
            a.sync().receive_sync_message(a_state, ack)?;
        }
        // Server → every other device, and their acknowledgements; the
        // server then asks whether it has more to say, as a live server does.
        for device in 1..devices {
            let (doc, state) = &mut replicas[device];
            let timer = Instant::now();
            let m = server
                .sync()
                .generate_sync_message(&mut server_states[device])
                .expect("a change to relay");
            server_time += timer.elapsed();
            doc.sync().receive_sync_message(state, m)?;
            if device == devices - 1 {
                samples.push(started.elapsed());
            }
            let ack = doc.sync().generate_sync_message(state);
            if let Some(ack) = ack {
                let timer = Instant::now();
                server
                    .sync()
                    .receive_sync_message(&mut server_states[device], ack)?;
                let more = server
                    .sync()
                    .generate_sync_message(&mut server_states[device]);
                server_time += timer.elapsed();
                if let Some(more) = more {
                    doc.sync().receive_sync_message(state, more)?;
                }
            }
        }
        // Let every link settle before the next edit, as a low rate does.
        for ((doc, state), server_state) in replicas.iter_mut().zip(&mut server_states) {
            exchange(doc, state, &mut server, server_state);
        }
    }
    let server_per_edit = server_time / edits.max(1) as u32;
    Ok(Floor {
        latency: Summary::of(&mut samples),
        all_per_edit: all_started.elapsed() / edits.max(1) as u32,
        server_per_edit,
        deliveries_per_core_second: (devices - 1) as f64 / server_per_edit.as_secs_f64(),
    })
}
