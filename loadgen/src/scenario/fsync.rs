//! The durability floor: how long one small write plus fsync takes on the
//! disk under the data directory. A change acknowledged only after it is on
//! disk cannot be acknowledged faster than this.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::stats::Summary;

/// `rounds` appends of 4 KiB, each followed by `sync_data`, in a file under `dir`.
pub fn run(dir: &Path, rounds: usize) -> anyhow::Result<Summary> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0x5au8; 4096];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(Summary::of(&mut samples))
}
