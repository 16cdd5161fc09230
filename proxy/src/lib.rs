//! Sluice, the proxy library behind the `sluice` binary.
