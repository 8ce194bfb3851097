//! Integration tests of micelio-gossip: the engine's checks one by one, a
//! deterministic scripted simulator of many engines with links cut and
//! healed, and the service over real peer managers on the in-memory
//! transport in several topologies.

mod engine;
mod service;
mod sim;
mod tree;
