//! Integration tests of micelio-state's core.

mod desired;
mod merge;
mod service;
mod sim;
mod vectors;
