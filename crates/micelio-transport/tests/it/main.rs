//! Integration tests of micelio-transport: one conformance suite run against
//! both the TCP/Noise and the in-memory transport, mesh formation, hostile
//! peers, timers, and persistence across restarts. Everything runs on
//! 127.0.0.1 with ports picked by the OS, and every wait is bounded.

mod adversarial;
mod conformance;
mod mesh;
mod mixed;
mod support;
mod timers;
