//! tapwire: relays raw Ethernet frames between WebSocket clients and a host TAP.
pub mod switch;
pub mod ws;
