//! tapwire: relays raw Ethernet frames between WebSocket clients and a host TAP.
pub mod config;
pub mod counters;
pub mod switch;
pub mod tap;
pub mod ws;
