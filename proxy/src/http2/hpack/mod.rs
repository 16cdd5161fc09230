//! HPACK, HTTP/2's header compression (RFC 7541): the `Decoder` and `Encoder` of one
//! connection's two directions, the static and dynamic tables (`table.rs`) and the Huffman code
//! (`huffman.rs`).
//!
//! Part of Sluice's own HTTP/2 codec (`http2/`); the `h2` crate's HPACK, which it replaced,
//! spent about a quarter of the proxy's instructions per h2c request
//! (`docs/bench/profile.md`). This one is written for a proxy: decoded values are slices of
//! the received block when they were not Huffman-encoded, a field already in a table is an
//! index compare away, and values that rarely repeat (request ids, paths) are not inserted into
//! the dynamic table to evict the ones that do.

mod decoder;
mod encoder;
pub mod huffman;
pub mod table;

pub use decoder::{Decoder, Field, Known};
pub use encoder::Encoder;

/// Why a header block could not be decoded; each is a COMPRESSION_ERROR for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    IntegerOverflow,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("dynamic table size update after a field")]
    LateSizeUpdate,
    #[error("dynamic table size update to {0} over the allowed {1}")]
    SizeUpdateTooLarge(usize, usize),
    #[error("header list larger than {0} bytes")]
    ListTooLarge(usize),
    #[error(transparent)]
    Huffman(#[from] huffman::HuffmanError),
}

#[cfg(test)]
mod tests;
