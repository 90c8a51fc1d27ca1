//! The committed header is the one cbindgen makes from the crate now.
//!
//! `CDX_WRITE_HEADER=1 cargo test -p codeedex-client-ffi --test header`
//! writes the fresh header instead of failing, after a change to the ABI.

use std::path::Path;

#[test]
fn the_committed_header_is_the_generated_one() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml reads");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut fresh);
    let path = crate_dir.join("include/codeedex.h");
    if std::env::var_os("CDX_WRITE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("the header is written");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} differs from what cbindgen generates from the crate; regenerate it with \
         `CDX_WRITE_HEADER=1 cargo test -p codeedex-client-ffi --test header` and commit it",
        path.display()
    );
}
