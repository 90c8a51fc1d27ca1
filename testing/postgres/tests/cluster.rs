//! The harness itself: the cluster starts once, hands out independent
//! databases, and its URLs connect.

use std::process::Command;

use codeedex_test_postgres::Cluster;

#[test]
fn two_databases_are_independent() {
    let cluster = Cluster::shared();
    let (a, b) = (cluster.database(), cluster.database());
    assert_ne!(a.name(), b.name());
    cluster.psql(
        a.name(),
        "CREATE TABLE only_in_a (x int); INSERT INTO only_in_a VALUES (7)",
    );
    assert_eq!(
        cluster.psql(a.name(), "SELECT x FROM only_in_a").trim(),
        "7"
    );
    let missing = cluster
        .try_psql(b.name(), "SELECT x FROM only_in_a")
        .expect_err("the table exists only in the first database");
    assert!(missing.contains("does not exist"), "{missing}");
}

#[test]
fn the_url_connects_to_its_database() {
    let cluster = Cluster::shared();
    let db = cluster.database();
    assert!(
        db.url().contains(&format!(":{}/", cluster.port())),
        "{}",
        db.url()
    );
    let bin = std::env::var("CODEEDEX_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned());
    let output = Command::new(format!("{bin}/psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT current_database(), current_user",
        ])
        .arg(db.url())
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{}|postgres", db.name())
    );
}

#[test]
fn the_cluster_is_started_once_per_process() {
    assert!(std::ptr::eq(Cluster::shared(), Cluster::shared()));
    assert_eq!(Cluster::shared().port(), Cluster::shared().port());
}
