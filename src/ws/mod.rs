//! WebSocket (RFC 6455) for tapwire's hot path: frame codec, streaming in-place decoder and
//! the HTTP upgrade. Pure: no I/O, no clocks, no `unsafe`.

pub mod access;
pub mod forwarded;
pub mod frame;
pub mod handshake;
pub mod session;

pub use handshake::{parse_upgrade, Rejection, Upgrade};
pub use session::{Event, Session, Violation};
