//! Writes appends shaped like the server's event log straight into sled and
//! prints the process's resident memory against the bytes on disk, so that
//! what sled's cache holds can be seen apart from everything else the
//! server keeps.
//!
//! The shape: twenty documents written at once, each replaced by a new one
//! after 300 events (as the soak's editors do), every append one
//! transaction over three trees (document meta, event, feed entry) with a
//! 220-byte event, and a flush every four appends.
//!
//! Usage: codeedex-sled-cache CACHE_MIB WRITES DIR

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

const DOCUMENTS: usize = 20;
const EVENTS_PER_DOCUMENT: u64 = 300;
const EVENT_BYTES: usize = 220;
const APPENDS_PER_FLUSH: u64 = 4;
const REPORT_EVERY: u64 = 20_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cache_mib, writes, dir] = args.as_slice() else {
        bail!("usage: codeedex-sled-cache CACHE_MIB WRITES DIR (DIR is emptied first)");
    };
    let cache_mib: u64 = cache_mib.parse().context("CACHE_MIB")?;
    let writes: u64 = writes.parse().context("WRITES")?;
    let dir = PathBuf::from(dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(cache_mib << 20)
        .open()?;
    let (documents, events, feed) = (
        db.open_tree("documents")?,
        db.open_tree("events")?,
        db.open_tree("feed")?,
    );
    // A fixed xorshift sequence: every run writes the same keys.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut new_document = || {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&random().to_be_bytes());
        id[8..].copy_from_slice(&random().to_be_bytes());
        (id, 0u64)
    };
    let mut live: Vec<([u8; 16], u64)> = (0..DOCUMENTS).map(|_| new_document()).collect();
    let event = vec![7u8; EVENT_BYTES];
    let started = Instant::now();
    println!("cache {cache_mib} MiB");
    println!("  writes | seconds | RSS MiB | disk MiB");
    for i in 0..=writes {
        if i % REPORT_EVERY == 0 {
            println!(
                "{i:>8} | {:>7.1} | {:>7.1} | {:>8.1}",
                started.elapsed().as_secs_f64(),
                rss_kib()? as f64 / 1024.0,
                disk_bytes(&dir) as f64 / (1024.0 * 1024.0)
            );
        }
        let slot = (i as usize * 7 + (i as usize / DOCUMENTS)) % DOCUMENTS;
        if live[slot].1 >= EVENTS_PER_DOCUMENT {
            live[slot] = new_document();
        }
        let (doc, seq) = live[slot];
        live[slot].1 += 1;
        let mut event_key = doc.to_vec();
        event_key.extend_from_slice(&seq.to_be_bytes());
        let mut feed_key = doc[..8].to_vec();
        feed_key.extend_from_slice(&db.generate_id()?.to_be_bytes());
        (&documents, &events, &feed)
            .transaction(|(documents, events, feed)| {
                documents.insert(&doc, &(seq + 1).to_be_bytes())?;
                events.insert(event_key.as_slice(), event.as_slice())?;
                feed.insert(feed_key.as_slice(), &doc)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| anyhow::anyhow!("transaction: {e:?}"))?;
        if i % APPENDS_PER_FLUSH == 0 {
            db.flush()?;
        }
    }
    Ok(())
}

fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS in /proc/self/status")?
        .parse()
        .context("VmRSS")
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
