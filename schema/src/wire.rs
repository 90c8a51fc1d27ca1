//! The automerge-repo network protocol, version 1 (being written).
