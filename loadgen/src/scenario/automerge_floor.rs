//! The protocol floor: the Automerge work one fan-out delivery needs, with
//! no network, no storage and no server: device A makes a change and
//! generates a sync message, the server's replica receives it and answers A,
//! then generates a message for device B, which receives it. This is the CPU
//! cost of one edit reaching one other device through a relay, on this
//! machine, before any IO.

use std::time::Instant;

use automerge::AutoCommit;
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;

use crate::stats::Summary;

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

/// Measures `edits` edits relayed from A through the server's replica to B.
pub fn run(edits: usize) -> anyhow::Result<Summary> {
    let mut a = AutoCommit::new();
    a.put(automerge::ROOT, "title", "fan-out")?;
    let mut server = a.fork();
    let mut b = a.fork();
    let (mut a_s, mut s_a, mut s_b, mut b_s) = (
        sync::State::new(),
        sync::State::new(),
        sync::State::new(),
        sync::State::new(),
    );
    // Settle the sync states first, as after a connection's first exchange.
    exchange(&mut a, &mut a_s, &mut server, &mut s_a);
    exchange(&mut server, &mut s_b, &mut b, &mut b_s);
    let mut samples = Vec::with_capacity(edits);
    for n in 0..edits {
        let started = Instant::now();
        a.put(automerge::ROOT, "d0", n as i64)?;
        // A → server, and the server's acknowledgement back to A.
        let m = a
            .sync()
            .generate_sync_message(&mut a_s)
            .expect("a change to send");
        server.sync().receive_sync_message(&mut s_a, m)?;
        if let Some(ack) = server.sync().generate_sync_message(&mut s_a) {
            a.sync().receive_sync_message(&mut a_s, ack)?;
        }
        // Server → B, and B's acknowledgement.
        let m = server
            .sync()
            .generate_sync_message(&mut s_b)
            .expect("a change to relay");
        b.sync().receive_sync_message(&mut b_s, m)?;
        samples.push(started.elapsed());
        if let Some(ack) = b.sync().generate_sync_message(&mut b_s) {
            server.sync().receive_sync_message(&mut s_b, ack)?;
        }
        // Let both links settle before the next edit, as the fan-out test's
        // low rate does.
        exchange(&mut a, &mut a_s, &mut server, &mut s_a);
        exchange(&mut server, &mut s_b, &mut b, &mut b_s);
    }
    Ok(Summary::of(&mut samples))
}
